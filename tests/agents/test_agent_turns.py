"""Agent turns end to end in-process: the fake model over HTTP, the real sandbox, the real
event log. (Threads of the turn use their own database connections, hence transactional_db.)"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from fake_openai import FakeOpenAI, Step

from agentide.agents import services
from agentide.events import log as event_log
from agentide.events.models import Event
from agentide.sessions import execution
from agentide.sessions.models import Cell
from agentide.sessions.notebook import render_event

pytestmark = pytest.mark.usefixtures("transactional_db", "enqueued")


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def ask(personas: Any, session: Any, text: str, who: Any = None) -> Cell:
    member = personas.membership(who or personas.member)
    return execution.submit_cell(member, session, Cell.Kind.PROMPT, text)


def run(cell: Cell) -> Cell:
    assert execution.run_next_cell(cell.session_id, worker="test") == cell
    cell.refresh_from_db()
    return cell


def events(cell: Cell, type_: str) -> list[dict[str, Any]]:
    return list(
        Event.objects.filter(cell=cell, type=type_)
        .order_by("seq")
        .values_list("payload", flat=True)
    )


def test_a_venv_made_in_one_turn_is_used_by_another_member_in_the_next(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    fake.add(
        Step(
            text="Creating a virtualenv.",
            calls=[
                {
                    "commands": [
                        "python3 -m venv /workspace/venv",
                        "printf 'import sys\\nprint(\"prefix=\" + sys.prefix)\\n'"
                        " > /workspace/hello.py",
                    ]
                }
            ],
        ),
        Step(text="The venv and **hello.py** are ready."),
    )
    first = run(ask(personas, agent_session, "Make a venv and a hello script."))
    assert first.status == Cell.Status.FINISHED, first.error
    (result,) = events(first, services.TOOL_RESULT)
    assert [o["exit_code"] for o in result["outputs"]] == [0, 0]
    final_id = events(first, services.RESPONSE)[-1]["response_id"]

    # Someone runs a shell cell by hand in between; the agent will see it.
    shell = execution.submit_cell(
        personas.membership(personas.admin), agent_session, Cell.Kind.SHELL, "echo made-by-hand"
    )
    assert execution.run_queued_cells(agent_session.pk) == 1

    def second_request(body: dict[str, Any]) -> None:
        assert body["previous_response_id"] == final_id
        sent = json.dumps(body["input"])
        assert "made-by-hand" in sent and "Run the hello script" in sent
        assert "Make a venv" not in sent  # the provider holds the earlier turn

    fake.add(
        Step(
            check=second_request,
            calls=[{"commands": ["/workspace/venv/bin/python /workspace/hello.py"]}],
        ),
        Step(text="It printed the venv prefix."),
    )
    second = run(
        ask(personas, agent_session, "Run the hello script with the venv.", who=personas.owner)
    )
    assert second.status == Cell.Status.FINISHED, second.error
    (result,) = events(second, services.TOOL_RESULT)
    assert result["outputs"][0]["stdout"].strip() == "prefix=/workspace/venv"
    live = "".join(p["text"] for p in events(second, services.OUTPUT))
    assert "prefix=/workspace/venv" in live
    assert shell.pk < second.pk
    finished = events(second, services.TURN_FINISHED)[0]
    assert finished["reason"] == "final" and finished["usage"]["input_tokens"] > 0
    # The cell's events form a gap-free part of the session's log.
    seqs = list(Event.objects.filter(session=agent_session).values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_several_commands_in_one_call_and_a_timeout_outcome(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    fake.add(
        Step(
            calls=[
                {"commands": ["echo one", "sleep 30", "echo three >&2; exit 3"], "timeout_ms": 1000}
            ]
        ),
        Step(text="One worked, one timed out, one failed."),
    )
    cell = run(ask(personas, agent_session, "Try three things."))
    assert cell.status == Cell.Status.FINISHED
    assert len(fake.requests[-1].body["input"]) == 1  # chained: only the new output goes
    sent = fake.requests[-1].body["input"][0]
    assert sent["type"] == "shell_call_output" and "status" not in sent
    assert sent["output"] == [
        {"stdout": "one\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}},
        {"stdout": "", "stderr": "", "outcome": {"type": "timeout"}},
        {"stdout": "", "stderr": "three\n", "outcome": {"type": "exit", "exit_code": 3}},
    ]
    outcomes = [e["outcome"] for e in events(cell, services.COMMAND_FINISHED)]
    assert outcomes == ["exit", "timeout", "exit"]


def test_chat_several_tool_calls_in_one_message_and_malformed_arguments(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    provider.kind = "chat_completions"
    provider.save()
    fake.add(
        Step(
            text="Two checks.",
            calls=[{"commands": ["echo alpha"]}, {"commands": ["pwd"]}],
            raw_calls=[("shell", '{"commands": "not closed')],
        ),
        Step(text="alpha, /workspace, and one call I got wrong."),
    )
    cell = run(ask(personas, agent_session, "Check things."))
    assert cell.status == Cell.Status.FINISHED, cell.error
    messages = fake.requests[-1].body["messages"]
    assert [m["role"] for m in messages[-4:]] == ["assistant", "tool", "tool", "tool"]
    answers = [json.loads(m["content"]) for m in messages[-3:]]
    assert answers[0]["results"][0]["stdout"] == "alpha\n"
    assert answers[1]["results"][0]["stdout"] == "/workspace\n"
    assert "not valid JSON" in answers[2]["error"]


@pytest.mark.parametrize(
    ("script", "words"),
    [
        ([Step(status=400, message="Invalid 'input[0]'.")], "Invalid 'input[0]'"),
        ([Step(status=500)] * 2, "500"),
    ],
)
def test_model_errors_end_the_turn_with_a_readable_error(
    personas: Any,
    agent_session: Any,
    provider: Any,
    fake: FakeOpenAI,
    settings: Any,
    script: list[Step],
    words: str,
) -> None:
    settings.AGENTIDE_MODEL_MAX_RETRIES = 1
    fake.add(*script)
    cell = run(ask(personas, agent_session, "Hello?"))
    assert cell.status == Cell.Status.FAILED
    assert words in cell.error
    (error,) = events(cell, services.ERROR)
    assert words in error["message"]


def test_a_wrong_key_fails_permanently_without_retrying(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    provider.set_api_key("sk-wrong")
    provider.save()
    cell = run(ask(personas, agent_session, "Hello?"))
    assert cell.status == Cell.Status.FAILED and "401" in cell.error
    assert events(cell, services.ERROR)[0]["permanent"] is True
    assert len(fake.requests) == 1


def test_rate_limits_are_retried_and_the_turn_goes_on(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    fake.add(Step(status=429), Step(text="Hi."))
    cell = run(ask(personas, agent_session, "Hello?"))
    assert cell.status == Cell.Status.FINISHED
    assert events(cell, services.MESSAGE)[0]["text"] == "Hi."


def test_cancel_kills_the_running_command_and_the_next_turn_still_works(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    fake.add(Step(text="Sleeping.", calls=[{"commands": ["sleep 120", "echo never"]}]))
    cell = ask(personas, agent_session, "Sleep a long time.")
    outcome: list[str] = []

    def turn() -> None:
        try:
            outcome.append(execution.run_next_cell(cell.session_id, worker="test"))
        finally:
            connection.close()

    worker = threading.Thread(target=turn)
    worker.start()
    wait_until(
        lambda: events(cell, services.COMMAND_STARTED), timeout=60, what="the command to start"
    )
    execution.cancel_cell(personas.membership(personas.owner), agent_session, cell.pk)
    worker.join(60)
    assert outcome == [cell]
    cell.refresh_from_db()
    assert cell.status == Cell.Status.CANCELLED
    assert events(cell, services.COMMAND_FINISHED)[0]["outcome"] == "cancelled"
    assert events(cell, services.TURN_FINISHED)[0]["reason"] == "cancelled"
    assert len(fake.requests) == 1
    # The unanswered call is answered as "not run" so the strict API takes the next turn.
    fake.add(Step(text="Back."))
    nxt = run(ask(personas, agent_session, "Are you there?"))
    assert nxt.status == Cell.Status.FINISHED, nxt.error
    assert fake.errors == []


def test_the_step_limit_ends_a_turn(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    provider.max_steps = 2
    provider.save()
    fake.add(Step(calls=[{"commands": ["true"]}]), Step(calls=[{"commands": ["true"]}]))
    cell = run(ask(personas, agent_session, "Loop forever."))
    assert cell.status == Cell.Status.FAILED and "limit of 2 steps" in cell.error
    assert events(cell, services.TURN_FINISHED)[0]["reason"] == "step_limit"


def test_a_step_writes_its_events_in_three_transactions_and_keeps_every_one_in_order(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, settings: Any
) -> None:
    """Events written back to back share one append (one lock of the session's seq), so a
    step (request; reply, call and command start; command end and result) takes three,
    not one per event, and the log still holds every event, gap-free and in order."""
    # Live text and output go out on their own once the flush interval has passed since
    # the last piece, which depends on the machine's speed: with an interval longer than
    # the test, only the turn's first piece does, in both turns compared.
    settings.NOTEBOOK_OUTPUT_FLUSH_MS = 600_000

    def appends(steps: int) -> tuple[int, Cell]:
        fake.add(*[Step(text="Running it.", calls=[{"commands": ["echo step"]}])] * steps,
                 Step(text="Done."))
        cell = ask(personas, agent_session, f"{steps} steps")
        with CaptureQueriesContext(connection) as queries:
            run(cell)
        locks = [q for q in queries.captured_queries
                 if q["sql"].startswith('UPDATE "notebook_session" SET "last_seq"')]
        return len(locks), cell

    base, _ = appends(1)  # starts the sandbox too
    with_steps, cell = appends(4)
    assert cell.status == Cell.Status.FINISHED
    assert (with_steps - base) / 3 <= 3
    seqs = list(Event.objects.filter(session=agent_session).order_by("seq")
                .values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    step_types = [
        services.REQUEST, services.MESSAGE, services.TOOL_CALL, services.RESPONSE,
        services.COMMAND_STARTED, services.OUTPUT, services.COMMAND_FINISHED,
        services.TOOL_RESULT,
    ]
    types = list(Event.objects.filter(cell=cell, type__in=step_types).order_by("seq")
                 .values_list("type", flat=True))
    assert types == step_types * 4 + [services.REQUEST, services.MESSAGE, services.RESPONSE]
    assert [r["outputs"][0]["stdout"] for r in events(cell, services.TOOL_RESULT)] == [
        "step\n"] * 4


def test_a_small_context_window_compacts_earlier_cells_into_a_summary(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    provider.context_window = 1000
    provider.context_budget_percent = 50
    provider.stores_responses = False
    provider.save()
    for n in range(4):
        execution.submit_cell(
            personas.membership(personas.member),
            agent_session,
            Cell.Kind.NOTE,
            f"Note {n}: " + "background " * 150,
        )

    def summarised(body: dict[str, Any]) -> None:
        sent = json.dumps(body["input"])
        assert "Summary of the earlier session" in sent and "THE SUMMARY" in sent
        assert "background background" not in sent

    fake.add(
        Step(text="THE SUMMARY: four notes about background."),
        Step(check=summarised, text="Understood."),
    )
    cell = run(ask(personas, agent_session, "What do the notes say?"))
    assert cell.status == Cell.Status.FINISHED, cell.error
    (compaction,) = events(cell, services.COMPACTION)
    assert compaction["summary"].startswith("THE SUMMARY")
    assert compaction["through_position"] == cell.position - 1
    assert "store" in fake.requests[0].body and fake.requests[0].body["store"] is False


def test_approval_mode_waits_for_a_person_and_sends_a_rejection_reason_to_the_model(
    client: Any, personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    from django.urls import reverse

    from agentide.agents.models import CommandApproval

    client.force_login(personas.reviewer)
    assert (
        client.post(
            reverse("approval_mode", args=[agent_session.pk]), {"required": "on"}
        ).status_code
        == 403
    )
    client.force_login(personas.member)
    client.post(reverse("approval_mode", args=[agent_session.pk]), {"required": "on"})
    assert services.approval_required(agent_session.pk)

    fake.add(
        Step(calls=[{"commands": ["echo approved-ran", "rm -rf /workspace/*"]}]),
        Step(text="Fine, I will not delete anything."),
    )
    cell = ask(personas, agent_session, "Clean up.")
    outcome: list[str] = []

    def turn() -> None:
        try:
            outcome.append(execution.run_next_cell(cell.session_id, worker="test"))
        finally:
            connection.close()

    worker = threading.Thread(target=turn)
    worker.start()
    first = wait_until(
        lambda: CommandApproval.objects.filter(cell=cell, index=0).first(),
        timeout=30,
        what="the first approval request",
    )
    assert not events(cell, services.COMMAND_STARTED)  # nothing runs before a decision
    client.force_login(personas.reviewer)
    url = reverse("approval_decide", args=[agent_session.pk, first.pk])
    assert client.post(url, {"decision": "approve"}).status_code == 403
    client.force_login(personas.admin)
    client.post(url, {"decision": "approve"})
    second = wait_until(
        lambda: CommandApproval.objects.filter(cell=cell, index=1).first(),
        timeout=60,
        what="the second approval request",
    )
    client.post(
        reverse("approval_decide", args=[agent_session.pk, second.pk]),
        {"decision": "reject", "reason": "never delete the workspace"},
    )
    worker.join(60)
    assert outcome == [cell]
    cell.refresh_from_db()
    assert cell.status == Cell.Status.FINISHED, cell.error
    (result,) = events(cell, services.TOOL_RESULT)
    assert result["outputs"][0]["stdout"] == "approved-ran\n"
    assert (
        "admin rejected this command: never delete the workspace"
        in (result["outputs"][1]["stderr"])
    )
    assert [e["command"] for e in events(cell, services.COMMAND_STARTED)] == ["echo approved-ran"]
    sent = fake.requests[-1].body["input"][0]["output"][1]
    assert "never delete the workspace" in sent["stderr"]
    assert sent["outcome"] == {"type": "exit", "exit_code": 1}
    page = client.get(reverse("session_detail", args=[agent_session.pk])).content.decode()
    assert "approved by admin" in page and "rejected by admin" in page
    assert 'id="agent-approval-required" aria-label="Approve each agent command" checked' in page
    assert "context " in page and f"/ {provider.context_window}" in page
    assert "never delete the workspace" in page
    live = "".join(
        render_event(m, session_id=agent_session.pk)
        for m in event_log.events_after(agent_session.pk, 0)
    )
    assert 'value="approve"' in live and "rejected by admin" in live
    assert 'id="agent-approval-mode" hx-swap-oob="true"' in live
    assert 'id="agent-context" hx-swap-oob="true"' in live


@pytest.mark.parametrize("kind", ["responses", "chat_completions"])
def test_cancel_stops_a_model_reply_mid_stream_and_keeps_what_was_streamed(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, kind: str
) -> None:
    provider.kind = kind
    provider.save()
    held = threading.Event()  # never set while the turn runs: the reply stalls mid-stream
    fake.add(Step(text="Thinking very hard about this", hold=held))
    cell = ask(personas, agent_session, "Think.")
    outcome: list[str] = []

    def turn() -> None:
        try:
            outcome.append(execution.run_next_cell(cell.session_id, worker="test"))
        finally:
            connection.close()

    worker = threading.Thread(target=turn)
    worker.start()
    wait_until(lambda: events(cell, services.TEXT), timeout=30, what="the first words")
    execution.cancel_cell(personas.membership(personas.member), agent_session, cell.pk)
    worker.join(30)
    held.set()
    assert outcome == [cell]
    cell.refresh_from_db()
    assert cell.status == Cell.Status.CANCELLED
    (partial,) = events(cell, services.MESSAGE)
    assert partial["partial"] and partial["text"] == "Thinking "


def test_when_the_provider_forgot_the_previous_response_the_full_input_is_sent(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    fake.add(
        Step(calls=[{"commands": ["echo remembered > /workspace/fact.txt"]}]), Step(text="Noted.")
    )
    first = run(ask(personas, agent_session, "Remember a fact."))
    assert first.status == Cell.Status.FINISHED
    fake.stored.clear()  # the provider expired its stored responses

    def full_input(body: dict[str, Any]) -> None:
        assert "previous_response_id" not in body
        sent = json.dumps(body["input"])
        assert "Remember a fact." in sent and "What was the fact?" in sent
        assert "shell_call_output" in sent

    fake.add(Step(check=full_input, text="It was in fact.txt."))
    second = run(ask(personas, agent_session, "What was the fact?"))
    assert second.status == Cell.Status.FINISHED, second.error
    assert "not found" in fake.errors[-1]
    requests = events(second, services.REQUEST)
    assert requests[0]["previous_response_id"] and not requests[-1]["previous_response_id"]


def test_a_shell_cell_queued_after_a_prompt_waits_for_it(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    fake.add(Step(calls=[{"commands": ["echo first > /workspace/order.txt"]}]), Step(text="ok"))
    prompt = ask(personas, agent_session, "Write the file.")
    shell = execution.submit_cell(
        personas.membership(personas.admin),
        agent_session,
        Cell.Kind.SHELL,
        "cat /workspace/order.txt",
    )
    # The session's one scheduler runs both in position order: the prompt, then the shell.
    assert execution.run_queued_cells(agent_session.pk, worker="test") == 2
    prompt.refresh_from_db()
    shell.refresh_from_db()
    assert prompt.status == Cell.Status.FINISHED, prompt.error
    assert shell.output.strip() == "first"
    assert prompt.finished_at is not None and shell.started_at is not None
    assert shell.started_at >= prompt.finished_at


def test_the_api_key_never_reaches_the_sandbox(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, monkeypatch: Any
) -> None:
    from fake_openai import API_KEY

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # the worker's environment holds it too
    fake.add(
        Step(calls=[{"commands": ["env", "grep -rs sk- /workspace /tmp || true"]}]), Step(text="ok")
    )
    cell = run(ask(personas, agent_session, "Show the environment."))
    assert cell.status == Cell.Status.FINISHED, cell.error
    (result,) = events(cell, services.TOOL_RESULT)
    seen = json.dumps(result) + "".join(p["text"] for p in events(cell, services.OUTPUT))
    assert "PATH=" in seen and API_KEY not in seen and "OPENAI_API_KEY" not in seen
