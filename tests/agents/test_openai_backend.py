"""The openai backend against the fake server: wire shapes, streaming, errors, retries."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fake_openai import API_KEY, MODEL, FakeOpenAI, Step

from agentide.agents.backends.base import (
    CommandOutput,
    Message,
    ModelError,
    ProviderConfig,
    ShellResult,
)
from agentide.agents.backends.egress import EgressPolicy
from agentide.agents.backends.openai import make_backend

LOOPBACK = EgressPolicy(private_networks=("127.0.0.0/8",))  # the fake server's address


def config(fake: FakeOpenAI, kind: Any = "responses", **extra: Any) -> ProviderConfig:
    return ProviderConfig(
        kind=kind,
        model=MODEL,
        api_key=API_KEY,
        base_url=fake.url,
        max_retries=extra.pop("max_retries", 2),
        egress=LOOPBACK,
        **extra,
    )


def never() -> bool:
    return False


def test_responses_streams_text_and_shell_calls_and_takes_shell_call_outputs() -> None:
    with FakeOpenAI(
        [
            Step(text="Let me look.", calls=[{"commands": ["ls", "pwd"], "timeout_ms": 5000}]),
            Step(text="Done: two files."),
        ]
    ) as fake:
        backend = make_backend(config(fake))
        deltas: list[str] = []
        reply = backend.respond(
            [Message("user", "list files")], on_text=deltas.append, should_stop=never
        )
        assert "".join(deltas) == "Let me look." == reply.text
        assert reply.response_id.startswith("resp_")
        assert reply.usage.input_tokens > 0
        (call,) = reply.calls
        assert call.commands == ("ls", "pwd") and call.timeout_ms == 5000
        result = ShellResult(
            call_id=call.call_id,
            form=call.form,
            outputs=(CommandOutput("a\nb\n", "", "exit", 0), CommandOutput("", "", "timeout")),
        )
        final = backend.respond(
            [result],
            previous_response_id=reply.response_id,
            on_text=deltas.append,
            should_stop=never,
        )
        assert final.text == "Done: two files." and final.calls == []
        sent = fake.requests[-1].body["input"][0]
        assert sent == {
            "type": "shell_call_output",
            "call_id": call.call_id,
            "output": [
                {"stdout": "a\nb\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}},
                {"stdout": "", "stderr": "", "outcome": {"type": "timeout"}},
            ],
        }
        assert fake.requests[0].body["tools"] == [
            {"type": "shell", "environment": {"type": "local"}}
        ]


def test_the_fake_is_strict_about_unanswered_calls_and_unknown_previous_responses() -> None:
    with FakeOpenAI([Step(calls=[{"commands": ["true"]}])]) as fake:
        backend = make_backend(config(fake))
        reply = backend.respond([Message("user", "go")], on_text=print, should_stop=never)
        with pytest.raises(ModelError, match="No tool output found") as err:
            backend.respond(
                [Message("user", "again")],
                previous_response_id=reply.response_id,
                on_text=print,
                should_stop=never,
            )
        assert err.value.permanent and err.value.status_code == 400
        with pytest.raises(ModelError, match="resp_nope"):
            backend.respond([], previous_response_id="resp_nope", on_text=print, should_stop=never)


def test_chat_answers_several_tool_calls_of_one_message_with_tool_messages() -> None:
    with FakeOpenAI(
        [
            Step(text="Two things.", calls=[{"commands": ["echo a"]}, {"commands": ["echo b"]}]),
            Step(text="ok"),
        ]
    ) as fake:
        backend = make_backend(config(fake, "chat_completions", instructions="Be brief."))
        deltas: list[str] = []
        reply = backend.respond([Message("user", "hi")], on_text=deltas.append, should_stop=never)
        assert "".join(deltas) == "Two things."
        assert [c.commands for c in reply.calls] == [("echo a",), ("echo b",)]
        assert reply.usage.input_tokens > 0
        history = [Message("user", "hi"), Message("assistant", reply.text), *reply.calls] + [
            ShellResult(c.call_id, c.form, (CommandOutput(c.commands[0][5:], "", "exit", 0),))
            for c in reply.calls
        ]
        assert backend.respond(history, on_text=print, should_stop=never).text == "ok"
        messages = fake.requests[-1].body["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
        assert len(messages[2]["tool_calls"]) == 2
        assert json.loads(messages[3]["content"])["results"][0]["stdout"] == "a"


def test_malformed_function_arguments_become_an_error_call() -> None:
    with FakeOpenAI([Step(raw_calls=[("shell", "{not json"), ("python", "{}")])]) as fake:
        reply = make_backend(config(fake, "chat_completions")).respond(
            [Message("user", "x")], on_text=print, should_stop=never
        )
        assert "not valid JSON" in reply.calls[0].error
        assert "Unknown tool 'python'" in reply.calls[1].error


@pytest.mark.parametrize("kind", ["responses", "chat_completions"])
def test_rate_limits_and_server_errors_are_retried_then_succeed(kind: Any) -> None:
    with FakeOpenAI([Step(status=429), Step(status=503), Step(text="fine")]) as fake:
        reply = make_backend(config(fake, kind)).respond(
            [Message("user", "x")], on_text=lambda _: None, should_stop=never
        )
        assert reply.text == "fine"
        assert len(fake.requests) == 3


def test_transient_errors_past_the_retries_are_not_permanent() -> None:
    with FakeOpenAI([Step(status=500)] * 3) as fake:
        with pytest.raises(ModelError) as err:
            make_backend(config(fake)).respond(
                [Message("user", "x")], on_text=print, should_stop=never
            )
        assert not err.value.permanent and err.value.status_code == 500


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"api_key": "sk-wrong"}, 401, "API key"),
        ({"model": "no-such-model"}, 404, "does not exist"),
    ],
)
def test_permanent_errors_say_what_is_wrong(
    change: dict[str, Any], status: int, words: str
) -> None:
    with FakeOpenAI([]) as fake:
        cfg = ProviderConfig(**{**config(fake).__dict__, **change})
        with pytest.raises(ModelError, match=words) as err:
            make_backend(cfg).complete("ping")
        assert err.value.permanent and err.value.status_code == status
        assert len(fake.requests) == 1  # not retried


def test_a_bad_request_is_permanent() -> None:
    with FakeOpenAI([Step(status=400, message="Invalid value for 'input'.")]) as fake:
        with pytest.raises(ModelError, match="Invalid value") as err:
            make_backend(config(fake, "chat_completions")).complete("ping")
        assert err.value.permanent


@pytest.mark.parametrize("kind", ["responses", "chat_completions"])
def test_complete_works_unstreamed(kind: Any) -> None:
    with FakeOpenAI([Step(text="pong")]) as fake:
        text, usage = make_backend(config(fake, kind)).complete("ping")
        assert text == "pong" and usage.output_tokens > 0
        assert "stream" not in fake.requests[0].body


def test_responses_accepts_function_calls_of_a_shell_function() -> None:
    with FakeOpenAI(
        [Step(raw_calls=[("shell", '{"commands": ["echo hi"], "timeout_ms": 2000}')]), Step()]
    ) as fake:
        backend = make_backend(config(fake))
        reply = backend.respond([Message("user", "x")], on_text=print, should_stop=never)
        (call,) = reply.calls
        assert call.form == "function_call" and call.commands == ("echo hi",)
        assert call.timeout_ms == 2000
        answer = ShellResult(call.call_id, call.form, (CommandOutput("hi\n", "", "exit", 0),))
        backend.respond(
            [answer], previous_response_id=reply.response_id, on_text=print, should_stop=never
        )
        sent = fake.requests[-1].body["input"][0]
        assert sent["type"] == "function_call_output" and sent["call_id"] == call.call_id
        assert json.loads(sent["output"])["results"][0]["stdout"] == "hi\n"
        assert fake.errors == []


def test_chat_tool_calls_sent_whole_without_an_index_stay_apart() -> None:
    with FakeOpenAI(
        [Step(calls=[{"commands": ["echo a"]}, {"commands": ["echo b"]}], whole_tool_calls=True)]
    ) as fake:
        reply = make_backend(config(fake, "chat_completions")).respond(
            [Message("user", "x")], on_text=print, should_stop=never
        )
        assert [c.commands for c in reply.calls] == [("echo a",), ("echo b",)]
        assert len({c.call_id for c in reply.calls}) == 2
