"""A long session for the paged transcript's tests: shell cells with output, prompt cells with
an agent turn (tool call, command, output), notes, and comments on every fifth cell."""

from __future__ import annotations

from typing import Any

from agentide.events import log as event_log
from agentide.events import registry
from agentide.events.models import Event
from agentide.sessions import execution
from agentide.sessions.models import Cell
from agentide.transcripts import services as transcripts
from tests.transcripts.conftest import finish

USAGE = {
    "input_tokens": 10,
    "cached_tokens": 0,
    "output_tokens": 5,
    "reasoning_tokens": 0,
    "cost": "0.000010",
    "purpose": "turn",
    "model": "fake-model",
}


def _agent_turn(session: Any, cell: Any, i: int) -> None:
    def emit(type_: str, payload: dict[str, Any]) -> None:
        event_log.append_event(session.pk, type_, payload, cell=cell)

    call = f"call_{i}"
    emit(registry.AGENT_MESSAGE, {"step": 1, "text": f"Looking at **{i}**."})
    emit(
        registry.AGENT_TOOL_CALL,
        {
            "step": 1,
            "call_id": call,
            "form": "shell_call",
            "commands": [f"echo agent {i}"],
            "timeout_ms": None,
            "max_output_length": None,
            "name": "shell",
            "arguments": "",
            "error": "",
        },
    )
    emit(
        registry.AGENT_COMMAND_STARTED,
        {"call_id": call, "index": 0, "command": f"echo agent {i}", "timeout_s": 300},
    )
    emit(registry.AGENT_OUTPUT, {"call_id": call, "index": 0, "text": f"agent {i}\n"})
    emit(
        registry.AGENT_COMMAND_FINISHED,
        {"call_id": call, "index": 0, "outcome": "exit", "exit_code": 0, "duration_ms": 3},
    )
    emit(
        registry.AGENT_TOOL_RESULT,
        {
            "call_id": call,
            "form": "shell_call",
            "outputs": [{"stdout": f"agent {i}\n", "stderr": "", "outcome": "exit",
                         "exit_code": 0}],
            "error": "",
            "max_output_length": None,
        },
    )
    emit(
        registry.AGENT_RESPONSE,
        {"step": 1, "response_id": f"resp_{i}", "usage": USAGE, "calls": 1,
         "context_tokens": 15},
    )


def long_session(personas: Any, session: Any, cells: int) -> Any:
    """Append ``cells`` cells to ``session`` (shell, shell, prompt, note, ...); returns it
    refreshed. The ``no_tasks`` fixture must be active (nothing really runs)."""
    member = personas.membership(personas.member)
    reviewer = personas.membership(personas.reviewer)
    for i in range(cells):
        kind = ("shell", "shell", "prompt", "note")[i % 4]
        source = {"shell": f"echo cell {i}", "prompt": f"Check {i}", "note": f"Note {i}"}[kind]
        cell = execution.submit_cell(member, session, kind, source)
        if kind != "note":
            assert execution.claim_next_cell(session.pk, worker="t") is not None
        if kind == "shell":
            finish(cell, status=Cell.Status.FINISHED, exit_code=0, output=f"out {i}\n")
        elif kind == "prompt":
            _agent_turn(session, cell, i)
            execution.finish_cell(cell, status=Cell.Status.FINISHED, outcome="final")
        if i % 5 == 0:
            created = Event.objects.get(cell=cell, type=registry.CELL_CREATED)
            transcripts.add_annotation(reviewer, session, created.seq, f"Comment on {i}")
    session.refresh_from_db()
    return session
