"""Prompt cells through the real pipeline: submit_cell -> Celery worker -> the turn, queued in
order with shell cells; the worker reaches the fake model over loopback HTTP."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from api_requests import answer, api_ask, user
from fake_openai import FakeOpenAI, Step

from agentide.agents import services
from agentide.events import registry
from agentide.events.models import Event
from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import services as sandboxes
from agentide.sessions import execution
from agentide.sessions.models import Cell

pytestmark = pytest.mark.usefixtures("transactional_db")


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def status(cell: Cell) -> str:
    cell.refresh_from_db()
    return cell.status


def test_prompts_and_shell_cells_run_in_order_through_the_worker(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, celery_worker: Any
) -> None:
    release = threading.Event()
    fake.add(
        Step(
            text="Writing it.",
            hold=release,
            calls=[{"commands": ["echo 'shared state' > /workspace/note.txt"]}],
        ),
        Step(text="Written."),
        Step(calls=[{"commands": ["wc -c < /workspace/note.txt"]}]),
        Step(text="13 bytes."),
    )
    first = execution.submit_cell(
        personas.membership(personas.member), agent_session, Cell.Kind.PROMPT, "Write a note file."
    )
    wait_until(
        lambda: Event.objects.filter(cell=first, type=services.TEXT).exists(),
        timeout=60,
        what="the first turn to stream text",
    )
    # Queued behind the running turn: a shell cell by hand, then another member's prompt.
    shell = execution.submit_cell(
        personas.membership(personas.admin),
        agent_session,
        Cell.Kind.SHELL,
        "cat /workspace/note.txt",
    )
    second = execution.submit_cell(
        personas.membership(personas.owner), agent_session, Cell.Kind.PROMPT, "How big is it?"
    )
    assert status(shell) == status(second) == Cell.Status.QUEUED
    release.set()
    wait_until(lambda: status(second) in Cell.DONE, timeout=90, what="the second turn")
    assert [status(c) for c in (first, shell, second)] == [Cell.Status.FINISHED] * 3
    assert shell.output.strip() == "shared state"
    (result,) = Event.objects.filter(cell=second, type=services.TOOL_RESULT)
    assert result.payload["outputs"][0]["stdout"].strip() == "13"
    started = list(
        Event.objects.filter(session=agent_session, type=registry.CELL_STARTED)
        .order_by("seq")
        .values_list("cell_id", flat=True)
    )
    assert started == [first.pk, shell.pk, second.pk]


def test_a_prompt_queued_behind_a_shell_cell_starts_as_soon_as_it_ends(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, celery_worker: Any
) -> None:
    fake.add(Step(text="Here."))
    shell = execution.submit_cell(
        personas.membership(personas.member),
        agent_session,
        Cell.Kind.SHELL,
        "while [ ! -e /workspace/go ]; do sleep 0.05; done; echo released",
    )
    wait_until(lambda: status(shell) == Cell.Status.RUNNING, timeout=60, what="the shell cell")
    prompt = execution.submit_cell(
        personas.membership(personas.owner), agent_session, Cell.Kind.PROMPT, "Are you there?"
    )
    assert status(prompt) == Cell.Status.QUEUED
    sandboxes.write_file(agent_session, "go", b"", admission=sandbox_admission(agent_session))
    wait_until(lambda: status(prompt) in Cell.DONE, timeout=60, what="the prompt")
    shell.refresh_from_db()
    prompt.refresh_from_db()
    assert shell.output == "released\n" and prompt.status == Cell.Status.FINISHED, prompt.error
    assert shell.finished_at is not None and prompt.started_at is not None
    assert prompt.started_at >= shell.finished_at
    # No retry tick: the prompt was started by one of the scheduler tasks that were sent, one
    # per submit and at most one handover from the task that ran the shell cell.
    log = celery_worker.output()
    assert "Retry in" not in log
    received = re.findall(r"run_session_cells\[[0-9a-f-]+\] received", log)
    assert 2 <= len(received) <= 3


def test_an_api_turn_through_the_worker_ends_on_a_client_call_and_goes_on_with_its_answer(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, celery_worker: Any
) -> None:
    fake.add(
        Step(
            calls=[{"commands": ["echo ran-in-the-sandbox"]}],
            raw_calls=[("get_weather", '{"city": "Lima"}')],
        )
    )
    first = api_ask(personas, agent_session, [user("Weather in Lima?")])
    wait_until(lambda: status(first) in Cell.DONE, timeout=90, what="the first API turn")
    assert (first.status, first.outcome) == (Cell.Status.FINISHED, "function_call"), first.error
    (result,) = Event.objects.filter(cell=first, type=services.TOOL_RESULT)
    assert result.payload["outputs"][0]["stdout"] == "ran-in-the-sandbox\n"
    (call,) = Event.objects.filter(cell=first, type=services.TOOL_CALL, payload__client=True)

    def answered(body: dict[str, Any]) -> None:
        assert answer(call.payload["call_id"], "warm") in body["input"]

    fake.add(Step(check=answered, text="Warm in Lima."))
    second = api_ask(personas, agent_session, [answer(call.payload["call_id"], "warm")])
    wait_until(lambda: status(second) in Cell.DONE, timeout=90, what="the second API turn")
    assert (second.status, second.outcome) == (Cell.Status.FINISHED, "final"), second.error
    assert fake.errors == []
