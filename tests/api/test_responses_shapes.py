"""The fold from a cell's events to the SDK's shapes, checked with the SDK's own models: every
stream event parses as a ``ResponseStreamEvent``, the SDK's stream accumulator accepts the
sequence, and the final Response it builds equals the fold's (nothing lost)."""

from __future__ import annotations

from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from agentide.api.shapes import RequestEcho, ResponseFold, input_item_object
from agentide.events import registry

STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


def events(*pairs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "seq": seq,
            "type": type_,
            "payload": payload,
            "cell_id": 7,
            "created_at": "2026-12-07T01:00:00+00:00",
        }
        for seq, (type_, payload) in enumerate(pairs, start=10)
    ]


def echo() -> RequestEcho:
    return RequestEcho(
        id="resp_abc",
        created_at=1.0,
        model="fake-model",
        tools=[
            {
                "type": "shell",
                "environment": {"type": "container_reference", "container_id": "cntr_x"},
            }
        ],
        metadata={"k": "v"},
    )


USAGE = {"input_tokens": 10, "cached_tokens": 2, "output_tokens": 5, "reasoning_tokens": 0}
TURN_WITH_SHELL = events(
    (registry.AGENT_TEXT, {"step": 1, "text": "Let me "}),
    (registry.AGENT_TEXT, {"step": 1, "text": "look."}),
    (registry.AGENT_MESSAGE, {"step": 1, "text": "Let me look."}),
    (
        registry.AGENT_TOOL_CALL,
        {
            "step": 1,
            "call_id": "call_1",
            "form": "shell_call",
            "commands": ["ls", "pwd"],
            "timeout_ms": 5000,
            "max_output_length": None,
            "name": "shell",
            "arguments": "",
            "error": "",
        },
    ),
    (
        registry.AGENT_RESPONSE,
        {"step": 1, "response_id": None, "usage": USAGE, "calls": 1, "context_tokens": 15},
    ),
    (
        registry.AGENT_COMMAND_STARTED,
        {"call_id": "call_1", "index": 0, "command": "ls", "timeout_s": 5},
    ),
    (registry.AGENT_OUTPUT, {"call_id": "call_1", "index": 0, "text": "a.txt\n"}),
    (
        registry.AGENT_COMMAND_FINISHED,
        {"call_id": "call_1", "index": 0, "outcome": "exit", "exit_code": 0, "duration_ms": 3},
    ),
    (
        registry.AGENT_COMMAND_STARTED,
        {"call_id": "call_1", "index": 1, "command": "pwd", "timeout_s": 5},
    ),
    (registry.AGENT_OUTPUT, {"call_id": "call_1", "index": 1, "text": "/workspace\n"}),
    (
        registry.AGENT_COMMAND_FINISHED,
        {
            "call_id": "call_1",
            "index": 1,
            "outcome": "timeout",
            "exit_code": None,
            "duration_ms": 3,
        },
    ),
    (
        registry.AGENT_TOOL_RESULT,
        {
            "call_id": "call_1",
            "form": "shell_call",
            "error": "",
            "max_output_length": None,
            "outputs": [
                {"stdout": "a.txt\n", "stderr": "", "outcome": "exit", "exit_code": 0},
                {"stdout": "/workspace\n", "stderr": "", "outcome": "timeout", "exit_code": None},
            ],
        },
    ),
    (registry.AGENT_MESSAGE, {"step": 2, "text": "Done."}),
    (
        registry.AGENT_RESPONSE,
        {"step": 2, "response_id": None, "usage": USAGE, "calls": 0, "context_tokens": 15},
    ),
    (
        registry.AGENT_TURN_FINISHED,
        {
            "reason": "final",
            "steps": 2,
            "usage": {**USAGE, "input_tokens": 20, "output_tokens": 10},
            "cost": "0",
        },
    ),
    (
        registry.CELL_FINISHED,
        {
            "cell_id": 7,
            "status": "finished",
            "outcome": "final",
            "exit_code": None,
            "duration_ms": 9,
            "error": "",
            "output_chars": 0,
            "truncated": False,
        },
    ),
)


def unparsed(value: Any) -> Any:
    """A dump without the SDK's ``parsed`` fields (structured output, not used here)."""
    if isinstance(value, dict):
        return {k: unparsed(v) for k, v in value.items() if k != "parsed"}
    if isinstance(value, list):
        return [unparsed(v) for v in value]
    return value


def run(fold: ResponseFold, cell_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stream = fold.opening_events()
    for event in cell_events:
        stream.extend(fold.feed(event))
    return stream


def accumulate(stream: list[dict[str, Any]]) -> Any:
    """The SDK's own stream state over our events; returns the final response it parsed."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    parsed = []
    for raw in stream:
        parsed.extend(state.handle_event(STREAM_EVENT.validate_python(raw)))
    return parsed


def test_a_shell_turn_streams_the_sdk_events_in_order_and_builds_the_same_response() -> None:
    fold = ResponseFold(echo())
    stream = run(fold, TURN_WITH_SHELL)
    assert [e["sequence_number"] for e in stream] == list(range(len(stream)))
    types = [e["type"] for e in stream]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert types.count("response.shell_call_command.added") == 2
    assert types.count("response.shell_call_output_content.delta") == 2
    assert types.count("response.shell_call_output_content.done") == 2
    parsed = accumulate(stream)
    final = parsed[-1].response
    response = Response.model_validate(fold.response())
    assert unparsed(final.model_dump()) == response.model_dump()
    assert [item.type for item in response.output] == [
        "message",
        "shell_call",
        "shell_call_output",
        "message",
    ]
    assert response.output_text == "Let me look.Done."
    shell_call, shell_output = response.output[1], response.output[2]
    assert shell_call.action.commands == ["ls", "pwd"] and shell_call.action.timeout_ms == 5000
    assert shell_output.call_id == shell_call.call_id == "call_1"
    assert shell_output.output[0].stdout == "a.txt\n"
    assert shell_output.output[0].outcome.type == "exit"
    assert shell_output.output[1].outcome.type == "timeout"
    assert (
        response.usage and response.usage.input_tokens == 20 and response.usage.total_tokens == 30
    )
    assert response.status == "completed" and response.metadata == {"k": "v"}
    # Items added in the stream carry the ids the final response has.
    added = [e["item"]["id"] for e in stream if e["type"] == "response.output_item.added"]
    assert added == [item.id for item in response.output]


def test_a_reply_without_deltas_still_streams_its_text() -> None:
    fold = ResponseFold(echo())
    stream = run(fold, [TURN_WITH_SHELL[12], *TURN_WITH_SHELL[-2:]])
    deltas = [e["delta"] for e in stream if e["type"] == "response.output_text.delta"]
    assert deltas == ["Done."]
    assert accumulate(stream)[-1].response.output_text == "Done."


def test_a_client_function_call_ends_the_response_with_a_function_call_item() -> None:
    fold = ResponseFold(echo())
    cell_events = events(
        (
            registry.AGENT_TOOL_CALL,
            {
                "step": 1,
                "call_id": "call_f",
                "form": "function_call",
                "commands": [],
                "timeout_ms": None,
                "max_output_length": None,
                "name": "get_weather",
                "arguments": '{"city": "Oslo"}',
                "error": "",
                "client": True,
            },
        ),
        (
            registry.AGENT_TURN_FINISHED,
            {"reason": "function_call", "steps": 1, "usage": USAGE, "cost": "0"},
        ),
        (
            registry.CELL_FINISHED,
            {
                "cell_id": 7,
                "status": "finished",
                "outcome": "function_call",
                "exit_code": None,
                "duration_ms": 9,
                "error": "",
                "output_chars": 0,
                "truncated": False,
            },
        ),
    )
    stream = run(fold, cell_events)
    final = accumulate(stream)[-1].response
    call = final.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == '{"city": "Oslo"}' and call.call_id == "call_f"
    assert final.status == "completed"


@pytest.mark.parametrize(
    ("reason", "status", "terminal", "expected"),
    [
        ("cancelled", "cancelled", "response.failed", "cancelled"),
        ("error", "failed", "response.failed", "failed"),
        ("max_output_tokens", "finished", "response.incomplete", "incomplete"),
    ],
)
def test_a_turn_cut_short_closes_its_items_and_ends_with_the_matching_event(
    reason: str, status: str, terminal: str, expected: str
) -> None:
    fold = ResponseFold(echo())
    cell_events = events(
        (registry.AGENT_TEXT, {"step": 1, "text": "Work"}),
        (TURN_WITH_SHELL[3]["type"], TURN_WITH_SHELL[3]["payload"]),
        (registry.AGENT_OUTPUT, {"call_id": "call_1", "index": 0, "text": "partial"}),
        (
            registry.AGENT_ERROR,
            {"message": "upstream broke", "permanent": True, "status_code": 500},
        ),
        (registry.AGENT_TURN_FINISHED, {"reason": reason, "steps": 1, "usage": USAGE, "cost": "0"}),
        (
            registry.CELL_FINISHED,
            {
                "cell_id": 7,
                "status": status,
                "outcome": reason,
                "exit_code": None,
                "duration_ms": 9,
                "error": "",
                "output_chars": 0,
                "truncated": False,
            },
        ),
    )
    stream = run(fold, cell_events)
    assert stream[-1]["type"] == terminal
    parsed = accumulate(stream)
    final = parsed[-1].response
    assert final.status == expected
    assert [item.status for item in final.output] == ["completed", "completed", "incomplete"]
    if expected == "failed":
        assert final.error and final.error.message == "upstream broke"
    if expected == "incomplete":
        assert final.incomplete_details and final.incomplete_details.reason == "max_output_tokens"


def test_events_already_folded_are_not_folded_twice() -> None:
    fold = ResponseFold(echo())
    run(fold, TURN_WITH_SHELL[:3])
    assert fold.feed(TURN_WITH_SHELL[1]) == []


def test_input_items_are_the_sdks_item_shapes() -> None:
    adapter = TypeAdapter(ResponseItem)
    for index, item in enumerate(
        [
            {"type": "message", "role": "user", "content": "hi"},
            {"type": "message", "role": "assistant", "content": "earlier"},
            {"type": "message", "role": "developer", "content": "be brief"},
            {"type": "function_call_output", "call_id": "call_f", "output": "12 C"},
        ]
    ):
        adapter.validate_python(input_item_object(item, f"in_{index}"))
