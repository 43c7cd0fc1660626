"""How a prompt cell shows the agent's work: first render and live fragments, escaped."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from fake_openai import FakeOpenAI, Step

from agentide.events import log as event_log
from agentide.sessions import execution
from agentide.sessions.models import Cell
from agentide.sessions.notebook import render_event

pytestmark = pytest.mark.usefixtures("transactional_db", "enqueued")

HOSTILE = "Here is **bold** and <script>alert('x')</script> <img src=x onerror=alert(1)>"


def test_model_text_is_markdown_sanitised_on_the_page_and_in_live_fragments(
    client: Any, personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    provider.kind = "chat_completions"
    provider.save()
    fake.add(Step(text="Trying.", raw_calls=[("shell", "{broken")]), Step(text=HOSTILE))
    cell = execution.submit_cell(
        personas.membership(personas.member),
        agent_session,
        Cell.Kind.PROMPT,
        "Say something <b>risky</b>.",
    )
    assert execution.run_next_cell(cell.session_id) == cell

    client.force_login(personas.reviewer)
    page = client.get(reverse("session_detail", args=[agent_session.pk])).content.decode()
    assert f'id="cell-{cell.pk}-agent"' in page
    assert "<strong>bold</strong>" in page
    assert "<script>alert" not in page and "<img" not in page and "<b>risky" not in page
    assert "not valid JSON" in page  # the malformed call's error shows in its block
    assert "tokens in" in page  # usage and totals

    live = "".join(
        render_event(m, session_id=agent_session.pk)
        for m in event_log.events_after(agent_session.pk, 0)
    )
    assert f'hx-swap-oob="beforeend:#cell-{cell.pk}-agent"' in live
    assert "<strong>bold</strong>" in live and "<script>alert" not in live
    assert "<img" not in live  # streamed deltas are escaped text
