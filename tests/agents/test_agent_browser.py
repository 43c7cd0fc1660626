"""A prompt cell streaming live in Debian's Chromium: the agent's text, its command's output
and the final Markdown answer appear for a reviewer watching, against Daphne, a real Celery
worker, Docker and the fake model."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from api_requests import api_ask, user
from fake_openai import FakeOpenAI, Step

from tests.support import open_page, wait_until

pytestmark = pytest.mark.browser


def test_a_prompt_cell_streams_the_agents_work_live(
    browser: Any,
    daphne_server: Any,
    celery_worker: Any,
    personas: Any,
    agent_session: Any,
    provider: Any,
    fake: FakeOpenAI,
    screenshot: Any,
) -> None:
    release = threading.Event()
    fake.add(
        Step(
            text="Let me count to three for you.",
            hold=release,
            calls=[{"commands": ["for i in 1 2 3; do echo n$i; done"]}],
        ),
        Step(text="Counted: **three** lines <script>window.__pwned=1</script>"),
    )
    member = open_page(browser, daphne_server, personas.member, agent_session)
    reviewer = open_page(browser, daphne_server, personas.reviewer, agent_session)

    member.check("input[name=kind][value=prompt]")
    member.fill("#composer-source", "Count to three.")
    member.press("#composer-source", "Control+Enter")

    # The first words arrive while the model is still "thinking" about the rest.
    steps = reviewer.locator("#cells .cell-prompt .agent-steps")
    wait_until(
        lambda: "Let" in (steps.text_content() or ""), timeout=60, what="the first streamed words"
    )
    assert "three for you" not in (steps.text_content() or "")
    screenshot(reviewer, "1-streaming")
    release.set()

    reviewer.wait_for_selector(".cell-prompt .agent-output:has-text('n3')", timeout=60_000)
    reviewer.wait_for_selector(".cell-prompt .agent-text strong:has-text('three')", timeout=60_000)
    reviewer.wait_for_selector(".cell-prompt .cell-state[data-status=finished]", timeout=60_000)
    assert reviewer.locator(".cell-prompt .agent-output").text_content() == "n1\nn2\nn3\n"
    assert (
        reviewer.locator(".cell-prompt .agent-end")
        .first.text_content()
        .strip()
        .startswith("exit 0")
    )
    assert reviewer.evaluate("window.__pwned") is None
    screenshot(reviewer, "2-finished")

    # A reload renders the same from the database.
    reviewer.reload()
    reviewer.wait_for_selector("#connection[data-state=live]")
    assert reviewer.locator(".cell-prompt .agent-output").text_content() == "n1\nn2\nn3\n"
    assert reviewer.locator(".cell-prompt .agent-text strong").text_content() == "three"
    assert "tokens in" in (reviewer.locator(".cell-prompt .agent-totals").text_content() or "")
    assert not member.errors + reviewer.errors


def test_approval_mode_from_the_page(
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
        Step(calls=[{"commands": ["echo approved-by-a-person"]}, {"commands": ["rm -rf /tmp/x"]}]),
        Step(text="Done, and I left /tmp alone."),
    )
    member = open_page(browser, daphne_server, personas.member, agent_session)
    reviewer = open_page(browser, daphne_server, personas.reviewer, agent_session)
    assert not reviewer.locator("#agent-approval-required").is_visible()

    member.check("#agent-approval-required")
    reviewer.wait_for_selector("#agent-approval-mode >> text=approval mode")
    member.check("input[name=kind][value=prompt]")
    member.fill("#composer-source", "Do two things.")
    member.press("#composer-source", "Control+Enter")

    first = member.locator(".agent-approval").first
    first.locator("button[value=approve]").click(timeout=60_000)
    reviewer.wait_for_selector(".agent-output:has-text('approved-by-a-person')", timeout=60_000)
    second = member.locator(".agent-approval").nth(1)
    second.locator("input[name=reason]").fill("not in /tmp please", timeout=60_000)
    second.locator("button[value=reject]").click()
    reviewer.wait_for_selector(".cell-prompt .cell-state[data-status=finished]", timeout=60_000)
    assert "rejected by member" in (reviewer.locator(".agent-approval").nth(1).text_content() or "")
    assert not reviewer.locator(".agent-approve").first.is_visible()
    screenshot(reviewer, "approvals")
    assert not member.errors + reviewer.errors


def test_an_api_turn_shows_live_with_its_shell_call_and_the_clients_function_call(
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
        Step(
            text="Writing a note, then asking you for the weather.",
            calls=[{"commands": ["echo noted | tee /workspace/note.txt"]}],
            raw_calls=[("get_weather", '{"city": "Paris"}')],
        )
    )
    reviewer = open_page(browser, daphne_server, personas.reviewer, agent_session)
    api_ask(personas, agent_session, [user("Weather in Paris? Note it first.")])
    call = reviewer.locator(".cell-prompt .agent-function-call")
    call.wait_for(timeout=60_000)
    assert call.locator("code").text_content() == 'get_weather({"city": "Paris"})'
    reviewer.wait_for_selector(".cell-prompt .agent-output:has-text('noted')", timeout=60_000)
    reviewer.wait_for_selector(
        ".cell-prompt .agent-totals:has-text('waiting for the API client')", timeout=60_000
    )
    screenshot(reviewer, "function-call")
    assert not reviewer.errors
