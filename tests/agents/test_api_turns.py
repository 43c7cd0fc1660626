"""Turns of the hosted API's prompt cells (an ``api.request`` event on the cell, appended in
the same transaction as the cell is submitted, as the API does): the request's instructions,
function tools, shell switch and output cap reach the upstream model over HTTP (the fake, for
each upstream kind), a call of a client function ends the turn after the reply's shell calls
ran in the real sandbox, and the client's answer in a later request goes back upstream in
the right wire form."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_requests import WEATHER, answer, api_ask, user
from django.urls import reverse
from fake_openai import FakeOpenAI, Step

from agentide.agents import services
from agentide.agents.backends.base import FunctionCall, FunctionOutput, Message
from agentide.events import log as event_log
from agentide.events import registry
from agentide.events.log import append_event
from agentide.events.models import Event
from agentide.sessions import execution
from agentide.sessions.models import Cell
from agentide.sessions.notebook import render_event

pytestmark = pytest.mark.usefixtures("transactional_db", "enqueued")

KINDS = ["responses", "chat_completions"]


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


def finished(cell: Cell) -> str:
    (end,) = events(cell, services.TURN_FINISHED)
    return str(end["reason"])


def tool_names(body: dict[str, Any]) -> list[str]:
    """The tools of an upstream request: "shell" for the shell tool, else the function's name."""
    names = []
    for tool in body.get("tools") or []:
        if tool["type"] == "shell":
            names.append("shell")
        else:
            names.append(tool.get("name") or tool["function"]["name"])
    return names


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_function_call_ends_the_turn_after_the_shell_calls_and_its_answer_goes_on(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, kind: str
) -> None:
    provider.kind = kind
    provider.instructions = "The project's own instructions."
    provider.save()

    def first_request(body: dict[str, Any]) -> None:
        assert tool_names(body) == ["shell", "get_weather"]
        if kind == "responses":
            assert body["instructions"] == "Answer in French."
            assert body["max_output_tokens"] == 500
            (weather,) = [t for t in body["tools"] if t["type"] == "function"]
            assert weather == WEATHER
            assert body["input"] == [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris? Save a note."},
            ]
        else:
            assert body["max_completion_tokens"] == body["max_tokens"] == 500
            (weather,) = [t for t in body["tools"] if t["function"]["name"] == "get_weather"]
            assert weather == {
                "type": "function",
                "function": {k: v for k, v in WEATHER.items() if k not in ("type", "name")}
                | {"name": "get_weather"},
            }
            assert body["messages"] == [
                {"role": "system", "content": "Answer in French."},
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris? Save a note."},
            ]

    fake.add(
        Step(
            check=first_request,
            text="Saving a note, then asking for the weather.",
            calls=[{"commands": ["echo asked > /workspace/note.txt && cat /workspace/note.txt"]}],
            raw_calls=[("get_weather", '{"city": "Paris"}')],
        )
    )
    first = run(
        api_ask(
            personas,
            agent_session,
            [
                {"type": "message", "role": "developer", "content": "Be brief."},
                user("Weather in Paris? Save a note."),
            ],
            instructions="Answer in French.",
            max_output_tokens=500,
        )
    )
    assert first.status == Cell.Status.FINISHED, first.error
    assert first.outcome == "function_call" and finished(first) == "function_call"
    shell_call, client_call = events(first, services.TOOL_CALL)
    assert "client" not in shell_call
    assert client_call["client"] is True and client_call["form"] == "function_call"
    assert client_call["name"] == "get_weather"
    assert client_call["arguments"] == '{"city": "Paris"}'
    assert client_call["commands"] == [] and client_call["error"] == ""
    # The shell call of the same reply ran in the session's container before the turn ended.
    (result,) = events(first, services.TOOL_RESULT)
    assert result["outputs"][0]["stdout"] == "asked\n"
    assert len(fake.requests) == 1

    call_id = client_call["call_id"]
    # Read here: the checks run in the fake server's threads, which keep no database.
    first_id = events(first, services.RESPONSE)[0]["response_id"]

    def second_request(body: dict[str, Any]) -> None:
        if kind == "responses":
            assert body["previous_response_id"] == first_id
            # Chained: the shell call's output, the client's answer, the new message.
            types = [item.get("type", "message") for item in body["input"]]
            assert types == ["shell_call_output", "function_call_output", "message"]
            assert body["input"][1] == answer(call_id, '{"sky": "sunny"}')
            # No instructions in the request: the project's apply.
            assert body["instructions"] == "The project's own instructions."
        else:
            messages = body["messages"]
            assert [m["role"] for m in messages[-5:]] == [
                "user", "assistant", "tool", "tool", "user",
            ]  # fmt: skip
            calls = messages[-4]["tool_calls"]
            assert [c["function"]["name"] for c in calls] == ["shell", "get_weather"]
            assert calls[1] == {
                "id": call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
            assert messages[-2] == {
                "role": "tool",
                "tool_call_id": call_id,
                "content": '{"sky": "sunny"}',
            }
            assert messages[0] == {"role": "system", "content": "The project's own instructions."}
        sent = json.dumps(body)
        assert "And tomorrow?" in sent and "[Prompt from" not in sent

    fake.add(
        Step(check=second_request, calls=[{"commands": ["cat /workspace/note.txt"]}]),
        Step(text="Sunny, and the note says asked."),
    )
    second = run(
        api_ask(
            personas,
            agent_session,
            [answer(call_id, '{"sky": "sunny"}'), user("And tomorrow?")],
        )
    )
    assert second.status == Cell.Status.FINISHED, second.error
    assert second.outcome == "final" and finished(second) == "final"
    (result,) = events(second, services.TOOL_RESULT)
    assert result["outputs"][0]["stdout"] == "asked\n"
    assert events(second, services.MESSAGE)[-1]["text"] == "Sunny, and the note says asked."
    assert fake.errors == []


@pytest.mark.parametrize("kind", KINDS)
def test_without_the_shell_tool_only_the_functions_go_and_a_shell_call_is_refused(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, kind: str
) -> None:
    provider.kind = kind
    provider.save()
    fake.add(
        Step(
            check=lambda body: tool_names(body) == ["get_weather"] or pytest.fail(str(body)),
            raw_calls=[("shell", '{"commands": ["id"]}')],
        ),
        Step(text="No shell here."),
    )
    cell = run(api_ask(personas, agent_session, [user("Run id.")], shell=False))
    assert cell.status == Cell.Status.FINISHED, cell.error
    assert finished(cell) == "final"
    assert not events(cell, services.COMMAND_STARTED)
    (result,) = events(cell, services.TOOL_RESULT)
    assert "Unknown tool 'shell': the tools are 'get_weather'" in result["error"]
    # No tools at all: the request has none.
    fake.add(Step(check=lambda body: "tools" not in body or pytest.fail(str(body)), text="Hi."))
    bare = run(api_ask(personas, agent_session, [user("Hi.")], tools=[], shell=False))
    assert bare.status == Cell.Status.FINISHED, bare.error
    assert fake.errors == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_reply_cut_by_max_output_tokens_ends_the_turn_incomplete(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, kind: str
) -> None:
    provider.kind = kind
    provider.save()
    fake.add(Step(text="The beginning of a long", calls=[{"commands": ["echo x"]}], cut=True))
    cell = run(api_ask(personas, agent_session, [user("Write a lot.")], max_output_tokens=16))
    assert cell.status == Cell.Status.FINISHED, cell.error
    assert finished(cell) == "max_output_tokens" and cell.outcome == "incomplete"
    assert events(cell, services.MESSAGE)[-1]["text"] == "The beginning of a long"
    assert not events(cell, services.COMMAND_STARTED)  # the cut reply's calls are not run
    # The next request answers the call that was not run, and the turn goes on.
    fake.add(Step(text="Continuing."))
    nxt = run(api_ask(personas, agent_session, [user("Go on.")]))
    assert nxt.status == Cell.Status.FINISHED, nxt.error
    assert fake.errors == []


def test_the_output_cap_is_for_the_whole_turn(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    fake.add(
        Step(calls=[{"commands": ["true"]}], usage={"input_tokens": 50, "output_tokens": 60}),
        Step(
            check=lambda body: body["max_output_tokens"] == 40 or pytest.fail(str(body)),
            calls=[{"commands": ["true"]}],
            usage={"input_tokens": 50, "output_tokens": 30},
        ),
    )
    cell = run(api_ask(personas, agent_session, [user("Work.")], max_output_tokens=100))
    # 10 tokens left: fewer than a model call may ask for, so the turn ends there.
    assert cell.status == Cell.Status.FINISHED, cell.error
    assert finished(cell) == "max_output_tokens"
    assert len(fake.requests) == 2 and len(events(cell, services.TOOL_RESULT)) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_an_unanswered_call_gets_an_error_answer_and_others_cells_keep_their_place(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, kind: str
) -> None:
    """A member's shell cell between the call and its answer, then a notebook prompt after a
    call nobody answered: every call is answered right after the reply that made it."""
    provider.kind = kind
    provider.stores_responses = False  # the full input goes each time: its order is checked
    provider.save()
    fake.add(Step(raw_calls=[("get_weather", '{"city": "Oslo"}')]))
    first = run(api_ask(personas, agent_session, [user("Oslo?")]))
    assert finished(first) == "function_call"
    (oslo,) = events(first, services.TOOL_CALL)
    execution.submit_cell(
        personas.membership(personas.admin), agent_session, Cell.Kind.SHELL, "echo by-hand"
    )
    assert execution.run_queued_cells(agent_session.pk) == 1

    def wire(body: dict[str, Any]) -> list[str]:
        """Each item or message of the request, as a short word."""
        if kind == "responses":
            return [
                item.get("type") if "type" in item else f"{item['role']}:{item['content'][:12]}"
                for item in body["input"]
            ]
        return [f"{m['role']}:{(m.get('content') or '')[:12]}" for m in body["messages"]]

    def second_request(body: dict[str, Any]) -> None:
        sent = wire(body)
        if kind == "responses":
            assert sent == [
                "user:Oslo?", "function_call", "function_call_output",
                "user:[admin ran a", "user:Thanks.",
            ]  # fmt: skip
        else:
            assert sent == [
                "user:Oslo?", "assistant:", 'tool:{"temp": 3}', "user:[admin ran a",
                "user:Thanks.",
            ]  # fmt: skip

    fake.add(
        Step(check=second_request, raw_calls=[("get_weather", '{"city": "Rome"}')]),
    )
    second = run(
        api_ask(personas, agent_session, [answer(oslo["call_id"], '{"temp": 3}'), user("Thanks.")])
    )
    assert finished(second) == "function_call", second.error

    def third_request(body: dict[str, Any]) -> None:
        text = json.dumps(body)
        assert services.UNANSWERED_CALL in text and "Anything else?" in text

    fake.add(Step(check=third_request, text="Nothing more."))
    third = run(
        execution.submit_cell(
            personas.membership(personas.owner), agent_session, Cell.Kind.PROMPT, "Anything else?"
        )
    )
    assert third.status == Cell.Status.FINISHED, third.error
    assert fake.errors == []


def test_the_api_request_payload_is_checked(agent_session: Any) -> None:
    with pytest.raises(registry.EventInvalid, match="needs the payload key 'shell'"):
        append_event(
            agent_session.pk,
            registry.API_REQUEST,
            {
                "response_id": "resp_1",
                "key_name": "k",
                "instructions": None,
                "input": [],
                "tools": [],
                "max_output_tokens": None,
            },
        )


def test_a_compaction_summarises_the_cells_before_the_api_request_and_keeps_its_input(
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
        assert "THE SUMMARY" in sent and "background background" not in sent
        assert body["input"][-1] == {"role": "user", "content": "What do the notes say?"}

    fake.add(
        Step(text="THE SUMMARY: four notes about background."),
        Step(check=summarised, text="Background."),
    )
    cell = run(api_ask(personas, agent_session, [user("What do the notes say?")]))
    assert cell.status == Cell.Status.FINISHED, cell.error
    summary_prompt = fake.requests[0].body["input"]
    assert "Note 0: background" in summary_prompt
    assert "What do the notes say?" not in summary_prompt
    assert fake.errors == []


def test_old_function_outputs_are_shortened_like_command_outputs() -> None:
    items: list[Any] = [
        FunctionCall("call_1", "get_weather", "{}"),
        FunctionOutput("call_1", "sunny " * 1000),
        Message("user", "one"),
        Message("user", "two"),
    ]
    assert services.shorten_old_outputs(items, keep_last=2, limit=200) == 1
    assert len(items[1].output) < 300 and "characters omitted" in items[1].output


def test_a_chained_request_after_an_unanswered_call_answers_it_first(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    fake.add(Step(text="Asking.", raw_calls=[("get_weather", '{"city": "Kyiv"}')]))
    first = run(api_ask(personas, agent_session, [user("Kyiv?")]))
    assert finished(first) == "function_call"
    (call,) = events(first, services.TOOL_CALL)
    first_id = events(first, services.RESPONSE)[0]["response_id"]

    def chained(body: dict[str, Any]) -> None:
        assert body["previous_response_id"] == first_id
        assert body["input"][0] == answer(call["call_id"], services.UNANSWERED_CALL)
        assert body["input"][-1]["content"].endswith("Never mind.")

    fake.add(Step(check=chained, text="OK."))
    nxt = run(
        execution.submit_cell(
            personas.membership(personas.owner), agent_session, Cell.Kind.PROMPT, "Never mind."
        )
    )
    assert nxt.status == Cell.Status.FINISHED, nxt.error
    assert fake.errors == []


def test_the_notebook_shows_the_client_call_and_why_the_turn_ended(
    client: Any, personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI
) -> None:
    fake.add(Step(raw_calls=[("get_weather", '{"city": "<b>Rome</b>"}')]))
    cell = run(api_ask(personas, agent_session, [user("Rome?")]))
    assert finished(cell) == "function_call"
    shown = '<code>get_weather({&quot;city&quot;: &quot;&lt;b&gt;Rome&lt;/b&gt;&quot;})</code>'
    live = "".join(
        render_event(m, session_id=agent_session.pk)
        for m in event_log.events_after(agent_session.pk, 0)
    )
    client.force_login(personas.reviewer)
    page = client.get(reverse("session_detail", args=[agent_session.pk])).content.decode()
    for html in (live, page):
        assert shown in html and "<b>Rome" not in html
        assert "waiting for the API client's function output" in html
