"""Fixtures of the transcript tests: a project, and a session whose log holds every event
type the notebook and the agent write, with the payload shapes they write."""

from __future__ import annotations

from typing import Any

import pytest

from agentide.events import log as event_log
from agentide.events import registry


@pytest.fixture
def project(personas: Any) -> Any:
    from agentide.projects.models import Project

    return Project.objects.create(
        team=personas.team, name="Demo", slug="demo", created_by=personas.owner
    )


@pytest.fixture
def no_tasks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record wake-ups of sessions' schedulers instead of sending the task to a broker."""
    from agentide.sessions import execution

    sent: list[int] = []
    monkeypatch.setattr(execution, "wake_scheduler", sent.append)
    return sent


def finish(
    cell: Any,
    *,
    status: str,
    exit_code: int | None,
    output: str,
    outcome: str = "exit",
    error: str = "",
) -> None:
    """Run a claimed cell's ending the way the notebook does: output events, cell.finished."""
    from agentide.lib.output import CappedOutput
    from agentide.sessions import execution

    capture = CappedOutput(head_chars=1024, tail_chars=256)
    for piece in (output[: len(output) // 2], output[len(output) // 2 :]):
        if piece:
            capture.append(piece)
            event_log.append_event(
                cell.session_id, registry.CELL_OUTPUT, {"text": piece, "sgr": ""}, cell=cell
            )
    execution.finish_cell(
        cell, status=status, outcome=outcome, exit_code=exit_code, error=error, output=capture
    )


def build_rich_session(personas: Any, project: Any) -> Any:
    """A session with shell cells (ok, failed, cancelled), a note, an agent turn with a tool
    call, a rename, a sandbox state change, an error and a comment."""
    from agentide.events.models import Event
    from agentide.sessions import execution, services
    from agentide.sessions.models import Cell
    from agentide.transcripts import services as transcripts

    member = personas.membership(personas.member)
    session = services.create_session(member, project, "Debugging <b>prod</b>")
    ok = execution.submit_cell(member, session, "shell", "echo '<script>alert(1)</script>'")
    assert execution.claim_next_cell(session.pk, worker="t") is not None
    finish(
        ok,
        status=Cell.Status.FINISHED,
        exit_code=0,
        output="\x1b[32m<script>alert(1)</script>\x1b[0m\n",
    )
    bad = execution.submit_cell(member, session, "shell", "ls /nope")
    assert execution.claim_next_cell(session.pk, worker="t") is not None
    finish(
        bad,
        status=Cell.Status.FAILED,
        exit_code=2,
        output="ls: cannot access '/nope': No such file or directory\n",
    )
    slow = execution.submit_cell(member, session, "shell", "sleep 100")
    assert execution.claim_next_cell(session.pk, worker="t") is not None
    execution.cancel_cell(member, session, slow.pk)
    finish(slow, status=Cell.Status.CANCELLED, exit_code=None, output="", outcome="cancelled")
    execution.submit_cell(
        personas.membership(personas.admin),
        session,
        "note",
        "## Plan\n<script>x()</script> then **fix** it",
    )
    services.rename_session(member, session, "Debugging prod")
    event_log.append_event(session.pk, registry.SANDBOX_STATE, {"state": "running"})
    event_log.append_event(session.pk, registry.ERROR, {"message": "worker lost"})

    # An agent turn, written with the agent's event types and payload shapes
    # (agentide/agents/services.py).
    prompt = Cell.objects.create(
        session=session,
        position=5,
        kind="prompt",
        source="Why does ls fail?",
        author=personas.member,
        status=Cell.Status.QUEUED,
    )
    event_log.append_event(
        session.pk,
        registry.CELL_CREATED,
        execution._cell_payload(prompt),
        cell=prompt,
        actor=personas.member,
    )
    Cell.objects.filter(pk=prompt.pk).update(status=Cell.Status.RUNNING)
    prompt.refresh_from_db()
    emit = lambda type_, payload: event_log.append_event(  # noqa: E731
        session.pk, type_, payload, cell=prompt
    )
    emit(registry.CELL_STARTED, {"cell_id": prompt.pk, "status": "running"})
    emit(
        "agent.request",
        {
            "step": 1,
            "model": "fake-model",
            "kind": "responses",
            "items": 3,
            "estimated_tokens": 120,
            "previous_response_id": "",
        },
    )
    emit("agent.text", {"step": 1, "text": "Let me "})
    emit("agent.message", {"step": 1, "text": "Let me check **/nope**."})
    emit(
        "agent.tool_call",
        {
            "step": 1,
            "call_id": "call_1",
            "form": "shell_call",
            "commands": ["test -e /nope; echo $?"],
            "timeout_ms": None,
            "max_output_length": None,
            "name": "shell",
            "arguments": "",
            "error": "",
        },
    )
    usage = {
        "input_tokens": 100,
        "cached_tokens": 20,
        "output_tokens": 30,
        "reasoning_tokens": 0,
        "cost": "0.000150",
        "purpose": "turn",
        "model": "fake-model",
    }
    emit(
        "agent.response",
        {"step": 1, "response_id": "resp_1", "usage": usage, "calls": 1, "context_tokens": 130},
    )
    emit(
        "agent.command_started",
        {"call_id": "call_1", "index": 0, "command": "test -e /nope; echo $?", "timeout_s": 300},
    )
    emit("agent.output", {"call_id": "call_1", "index": 0, "text": "1\n"})
    emit(
        "agent.command_finished",
        {"call_id": "call_1", "index": 0, "outcome": "exit", "exit_code": 0, "duration_ms": 12},
    )
    emit(
        "agent.tool_result",
        {
            "call_id": "call_1",
            "form": "shell_call",
            "outputs": [{"stdout": "1\n", "stderr": "", "outcome": "exit", "exit_code": 0}],
            "error": "",
            "max_output_length": None,
        },
    )
    emit(
        "agent.compaction",
        {
            "summary": "ran ls",
            "through_position": 4,
            "tokens_before": 900,
            "usage": {**usage, "purpose": "compaction"},
        },
    )
    emit(
        "agent.request",
        {
            "step": 2,
            "model": "fake-model",
            "kind": "responses",
            "items": 1,
            "estimated_tokens": 20,
            "previous_response_id": "resp_1",
        },
    )
    emit("agent.message", {"step": 2, "text": "`/nope` does not exist. <img src=x onerror=y>"})
    emit(
        "agent.response",
        {"step": 2, "response_id": "resp_2", "usage": usage, "calls": 0, "context_tokens": 130},
    )
    emit("agent.error", {"message": "rate limited once", "permanent": False, "status_code": 429})
    emit(
        "agent.turn_finished",
        {
            "reason": "final",
            "steps": 2,
            "usage": {
                "input_tokens": 200,
                "cached_tokens": 40,
                "output_tokens": 60,
                "reasoning_tokens": 0,
            },
            "cost": "0.000300",
        },
    )
    execution.finish_cell(prompt, status=Cell.Status.FINISHED, outcome="final")

    reviewer = personas.membership(personas.reviewer)
    first_output = Event.objects.filter(cell=bad, type="cell.finished").get()
    comment = transcripts.add_annotation(
        reviewer, session, first_output.seq, "Why was /nope expected? <i>hm</i>"
    )
    transcripts.set_annotation_resolved(member, session, comment.seq, True)
    session.refresh_from_db()
    return session


@pytest.fixture
def rich_session(personas: Any, project: Any, no_tasks: list[int]) -> Any:
    return build_rich_session(personas, project)
