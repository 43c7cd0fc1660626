"""An agent turn with more output than the page keeps, in Debian's Chromium: the output box
is capped visibly and the turn's earlier blocks stay, against Daphne, a real Celery worker,
Docker and the fake model."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from fake_openai import FakeOpenAI, Step
from test_agent_browser import open_page

pytestmark = pytest.mark.browser


def test_a_150k_character_turn_keeps_its_earlier_blocks_and_caps_its_output(
    browser: Any,
    daphne_server: Any,
    celery_worker: Any,
    personas: Any,
    agent_session: Any,
    provider: Any,
    fake: FakeOpenAI,
    screenshot: Any,
) -> None:
    fake.add(
        Step(text="First I list thirty thousand numbers.", calls=[{"commands": ["seq 1 30000"]}]),
        Step(text="Done: **thirty thousand** lines."),
    )
    member = open_page(browser, daphne_server, personas.member, agent_session)
    member.check("input[name=kind][value=prompt]")
    member.fill("#composer-source", "Count to thirty thousand.")
    member.press("#composer-source", "Control+Enter")
    member.wait_for_selector(".cell-prompt .cell-state[data-status=finished]", timeout=120_000)
    member.wait_for_selector(".cell-prompt .agent-totals", timeout=60_000)

    steps = member.locator(".cell-prompt .agent-steps")
    # 168,894 characters of output: the page keeps the last cap's worth, says so, and the
    # blocks before and after the command are all still there.
    output = steps.locator("pre.agent-output")
    text = output.text_content() or ""
    assert text.endswith("29999\n30000\n")
    assert len(text) <= settings.NOTEBOOK_DOM_OUTPUT_CHARS
    assert steps.locator(".clipped").is_visible()
    assert "First I list thirty thousand numbers." in (steps.text_content() or "")
    assert steps.locator("code:has-text('$ seq 1 30000')").count() == 1
    assert steps.locator(".agent-text strong:has-text('thirty thousand')").count() == 1
    screenshot(member, "capped-turn")

    # A reload renders the same cap from the database.
    member.reload()
    member.wait_for_selector("#connection[data-state=live]")
    text = member.locator(".cell-prompt pre.agent-output").text_content() or ""
    assert text.endswith("29999\n30000\n") and len(text) <= settings.NOTEBOOK_DOM_OUTPUT_CHARS
    assert member.locator(".cell-prompt .agent-steps .clipped").is_visible()
    assert "First I list" in (member.locator(".cell-prompt .agent-steps").text_content() or "")
    assert not member.errors
