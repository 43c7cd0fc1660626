"""Output that a hostile or broken program writes never loses output or breaks a page
(issue 12 item 10): a 5,000-digit SGR parameter through a real shell cell and as an agent's
tool output."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.urls import reverse

from agentide.events import log as event_log
from agentide.events import registry
from agentide.events.models import Event
from agentide.sessions import execution
from agentide.sessions.models import Cell
from tests.support import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HUGE_SGR = "\x1b[" + "9" * 5000 + "m"
COMMAND = "printf '\\e[%sm' $(printf '9%.0s' {1..5000}); echo after-the-escape"


@pytest.fixture
def destroy_sandboxes() -> Iterator[None]:
    yield
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions.models import Session

    for session in Session.objects.all():
        sandboxes.destroy_sandbox(session)


def test_a_5000_digit_sgr_parameter_keeps_the_cells_output_and_the_page_renders(
    client: Any, personas: Any, session: Any, celery_worker: Any, destroy_sandboxes: None
) -> None:
    member = personas.membership(personas.member)
    cell = execution.submit_cell(member, session, "shell", COMMAND)
    after = execution.submit_cell(member, session, "shell", "echo next")

    def done(c: Cell) -> Cell | None:
        c.refresh_from_db()
        return c if c.is_done else None

    cell = wait_until(lambda: done(cell), timeout=90, what="the cell to finish")
    assert cell.status == Cell.Status.FINISHED and cell.exit_code == 0
    assert cell.output == HUGE_SGR + "after-the-escape\n"
    live = Event.objects.filter(cell=cell, type=registry.CELL_OUTPUT).order_by("seq")
    assert "".join(e.payload["text"] for e in live) == cell.output
    assert wait_until(lambda: done(after), timeout=60).output == "next\n"

    client.force_login(personas.reviewer)
    page = client.get(reverse("session_detail", args=[session.pk]))
    assert page.status_code == 200
    assert "after-the-escape" in page.content.decode()
    raw = client.get(reverse("cell_output", args=[session.pk, cell.pk]))
    assert raw.status_code == 200 and b"after-the-escape" in raw.content


def test_the_same_text_as_an_agent_tool_output_keeps_every_page_working(
    client: Any, personas: Any, session: Any, no_tasks: list[int]
) -> None:
    text = HUGE_SGR + "after-the-escape\n"
    prompt = Cell.objects.create(
        session=session,
        position=1,
        kind="prompt",
        source="Print something odd.",
        author=personas.member,
        status=Cell.Status.RUNNING,
    )
    event_log.append_event(
        session.pk,
        registry.CELL_CREATED,
        execution._cell_payload(prompt),
        cell=prompt,
        actor=personas.member,
    )

    def emit(type_: str, payload: dict[str, Any]) -> None:
        event_log.append_event(session.pk, type_, payload, cell=prompt)

    # The agent's event types and payload shapes (agentide/agents/services.py).
    emit(registry.CELL_STARTED, {"cell_id": prompt.pk, "status": "running"})
    emit(
        "agent.tool_call",
        {
            "step": 1,
            "call_id": "call_1",
            "form": "shell_call",
            "commands": [COMMAND],
            "timeout_ms": None,
            "max_output_length": None,
            "name": "shell",
            "arguments": "",
            "error": "",
        },
    )
    emit(
        "agent.command_started",
        {"call_id": "call_1", "index": 0, "command": COMMAND, "timeout_s": 300},
    )
    emit("agent.output", {"call_id": "call_1", "index": 0, "text": text})
    emit(
        "agent.command_finished",
        {"call_id": "call_1", "index": 0, "outcome": "exit", "exit_code": 0, "duration_ms": 9},
    )
    emit(
        "agent.tool_result",
        {
            "call_id": "call_1",
            "form": "shell_call",
            "outputs": [{"stdout": text, "stderr": "", "outcome": "exit", "exit_code": 0}],
            "error": "",
            "max_output_length": None,
        },
    )
    emit("agent.message", {"step": 2, "text": "Done: " + text})
    execution.finish_cell(prompt, status=Cell.Status.FINISHED, outcome="final")

    client.force_login(personas.reviewer)
    pages = {
        "agent steps": reverse("session_detail", args=[session.pk]),
        "transcript": reverse("transcript_detail", args=[session.pk]),
        "jsonl": reverse("transcript_export", args=[session.pk, "jsonl"]),
        "markdown": reverse("transcript_export", args=[session.pk, "md"]),
        "html": reverse("transcript_export", args=[session.pk, "html"]),
    }
    for name, url in pages.items():
        response = client.get(url)
        assert response.status_code == 200, name
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert b"after-the-escape" in body, name
