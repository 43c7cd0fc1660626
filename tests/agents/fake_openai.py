"""A fake OpenAI-compatible server for tests: real HTTP on loopback, scripted replies.

It serves ``POST /v1/responses`` and ``POST /v1/chat/completions``, streamed (SSE) and not,
and is as strict as the real API where AgentIDE could get things wrong: an unknown
``previous_response_id``, a tool call left without an output, an output for an unknown call,
a ``status`` on a ``shell_call_output``, a malformed tool, an output cap below the API's
minimum, a ``developer`` message to Chat (compatible servers know none), a wrong API key or
an unknown model all answer 4xx with the API's error shape. Each request takes the next
``Step`` of the script; every request body is kept in ``requests`` for assertions.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "sk-fake-test-key"
MODEL = "fake-model"


@dataclass
class Step:
    """One scripted reply.

    ``text``: the assistant's text (streamed word by word). ``calls``: native shell calls
    (Responses) or ``shell`` function tool calls (Chat), each a dict with ``commands`` and
    optional ``timeout_ms`` / ``max_output_length``. ``raw_calls``: (name, arguments) pairs
    sent verbatim as function/tool calls (for malformed arguments). ``status``/``message``:
    answer with an API error instead. ``check``: called with the request body (assertions).
    ``hold``: the server waits on it after the first text delta (to cancel mid-stream).
    ``cut``: the reply stops at the output cap (Responses incomplete, Chat finish "length").
    """

    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    raw_calls: list[tuple[str, str]] = field(default_factory=list)
    status: int = 200
    message: str = ""
    check: Callable[[dict[str, Any]], None] | None = None
    hold: threading.Event | None = None
    whole_tool_calls: bool = False  # Chat: each tool call in one chunk, without "index"
    usage: dict[str, int] | None = None
    redirect: str = ""  # answer 307 to this URL instead (before checking the key)
    cut: bool = False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a cancelled stream, a retried request) is not an error here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "", param: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class FakeOpenAI:
    """Context manager running the server in a thread; ``url`` is the SDK's ``base_url``."""

    def __init__(
        self,
        script: list[Step] | None = None,
        *,
        models: tuple[str, ...] = (MODEL,),
        api_key: str = API_KEY,
        tls: Any = None,
    ) -> None:
        self.script: list[Step] = list(script or [])
        self.models = models
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self.stored: dict[str, list[dict[str, Any]]] = {}  # response id -> full conversation
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        if tls is not None:  # serve HTTPS with this ssl.SSLContext
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for step in self.script:
            if step.hold is not None:
                step.hold.set()
        self._server.shutdown()
        self._server.server_close()

    def add(self, *steps: Step) -> None:
        with self._lock:
            self.script.extend(steps)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    def _pop_redirect(self) -> str:
        with self._lock:
            if self.script and self.script[0].redirect:
                return self.script.pop(0).redirect
            return ""

    def _next_step(self) -> Step:
        with self._lock:
            if not self.script:
                raise ApiError(500, "fake server: the script has no more steps")
            return self.script.pop(0)

    # --- HTTP -------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    fake.requests.append(Recorded(self.path, body, headers))
                    redirect = fake._pop_redirect()
                    if redirect:
                        self.send_response(307)
                        self.send_header("location", redirect)
                        self.send_header("content-length", "0")
                        self.end_headers()
                        return
                    if self.headers.get("authorization") != f"Bearer {fake.api_key}":
                        raise ApiError(401, "Incorrect API key provided.", "invalid_api_key")
                    if body.get("model") not in fake.models:
                        raise ApiError(
                            404,
                            f"The model `{body.get('model')}` does not exist "
                            "or you do not have access to it.",
                            "model_not_found",
                        )
                    if self.path == "/v1/responses":
                        events = fake.responses(body)
                    elif self.path == "/v1/chat/completions":
                        events = fake.chat(body)
                    else:
                        raise ApiError(404, f"Unknown path {self.path}")
                    first = next(events)  # validation errors surface before any byte is sent
                except ApiError as exc:
                    if exc.status < 500 and exc.status != 429:
                        fake.errors.append(exc.message)
                    self._json(
                        exc.status,
                        {
                            "error": {
                                "message": exc.message,
                                "type": "invalid_request_error",
                                "code": exc.code or None,
                                "param": exc.param or None,
                            }
                        },
                    )
                    return
                if not body.get("stream"):
                    self._json(200, first)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for event in itertools.chain([first], events):
                        if event == "[DONE]":
                            self.wfile.write(b"data: [DONE]\n\n")
                        else:
                            name = event.get("type", "")
                            line = f"event: {name}\n" if name else ""
                            self.wfile.write(f"{line}data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status == 429 or status >= 500:
                    self.send_header("retry-after-ms", "1")
                self.end_headers()
                self.wfile.write(data)

        return Handler

    # --- Responses --------------------------------------------------------------------------

    def responses(self, body: dict[str, Any]) -> Iterator[Any]:
        previous = body.get("previous_response_id")
        conversation: list[dict[str, Any]] = []
        if previous:
            if previous not in self.stored:
                raise ApiError(
                    400,
                    f"Previous response with id '{previous}' not found.",
                    "previous_response_not_found",
                    "previous_response_id",
                )
            conversation = list(self.stored[previous])
        new_input = body.get("input", [])
        if isinstance(new_input, str):
            new_input = [{"role": "user", "content": new_input}]
        conversation += new_input
        self._check_responses_conversation(conversation)
        self._check_responses_options(body)
        step = self._next_step()
        if step.check is not None:
            step.check(body)
        if step.status != 200:
            raise ApiError(step.status, step.message or "scripted failure")
        return self._responses_events(body, conversation, step)

    def _check_responses_conversation(self, conversation: list[dict[str, Any]]) -> None:
        calls: dict[str, str] = {}
        answered: set[str] = set()
        for item in conversation:
            kind = item.get("type", "message")
            if kind in ("shell_call", "function_call"):
                calls[item["call_id"]] = kind
            elif kind in ("shell_call_output", "function_call_output"):
                call_id = item.get("call_id")
                if calls.get(call_id) != kind.removesuffix("_output"):
                    raise ApiError(
                        400, f"No tool call found for {kind} with call_id {call_id}.", param="input"
                    )
                if kind == "shell_call_output":
                    self._check_shell_output(item)
                answered.add(call_id)
        missing = sorted(set(calls) - answered)
        if missing:
            raise ApiError(
                400, f"No tool output found for {calls[missing[0]]} {missing[0]}.", param="input"
            )

    @staticmethod
    def _check_responses_options(body: dict[str, Any]) -> None:
        cap = body.get("max_output_tokens")
        if cap is not None and (not isinstance(cap, int) or cap < 16):
            raise ApiError(
                400,
                "Invalid 'max_output_tokens': integer below minimum value. "
                "Expected a value >= 16.",
                param="max_output_tokens",
            )
        for tool in body.get("tools") or []:
            kind = tool.get("type")
            if kind == "function":
                if not isinstance(tool.get("name"), str) or not isinstance(
                    tool.get("parameters"), dict
                ):
                    raise ApiError(400, "Missing required parameter: 'tools[].name'.")
            elif kind != "shell":
                raise ApiError(400, f"Invalid value: '{kind}'.", param="tools[].type")

    @staticmethod
    def _check_shell_output(item: dict[str, Any]) -> None:
        if "status" in item:
            raise ApiError(400, "Unknown parameter: 'input[].status' on shell_call_output.")
        output = item.get("output")
        if not isinstance(output, list) or not output:
            raise ApiError(400, "shell_call_output.output must be a non-empty array.")
        for entry in output:
            outcome = entry.get("outcome") or {}
            ok = (
                isinstance(entry.get("stdout"), str)
                and isinstance(entry.get("stderr"), str)
                and (
                    outcome.get("type") == "timeout"
                    or (outcome.get("type") == "exit" and isinstance(outcome.get("exit_code"), int))
                )
            )
            if not ok:
                raise ApiError(400, f"Invalid shell_call_output entry: {entry!r}")

    def _responses_events(
        self, body: dict[str, Any], conversation: list[dict[str, Any]], step: Step
    ) -> Iterator[Any]:
        response_id = self.new_id("resp")
        output: list[dict[str, Any]] = []
        if step.text:
            output.append(
                {
                    "type": "message",
                    "id": self.new_id("msg"),
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": step.text, "annotations": []}],
                }
            )
        for call in step.calls:
            action = {
                "commands": call["commands"],
                "timeout_ms": call.get("timeout_ms"),
                "max_output_length": call.get("max_output_length"),
            }
            output.append(
                {
                    "type": "shell_call",
                    "id": self.new_id("sh"),
                    "call_id": call.get("call_id") or self.new_id("call"),
                    "action": action,
                    "status": "completed",
                    "environment": {"type": "local"},
                }
            )
        for name, arguments in step.raw_calls:
            output.append(
                {
                    "type": "function_call",
                    "id": self.new_id("fc"),
                    "call_id": self.new_id("call"),
                    "name": name,
                    "arguments": arguments,
                    "status": "completed",
                }
            )
        usage = step.usage or _usage(conversation, step)
        response = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete" if step.cut else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if step.cut else None,
            "model": body["model"],
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": body.get("tools", []),
            "usage": {
                "input_tokens": usage["input_tokens"],
                "input_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
                "output_tokens": usage["output_tokens"],
                "output_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
                "total_tokens": usage["input_tokens"] + usage["output_tokens"],
            },
        }
        if body.get("store", True):
            self.stored[response_id] = conversation + [
                {k: v for k, v in item.items() if k != "id"} for item in output
            ]
        if not body.get("stream"):
            yield response
            return
        seq = itertools.count()
        started = dict(response, status="in_progress", output=[], usage=None)
        yield {"type": "response.created", "sequence_number": next(seq), "response": started}
        for index, item in enumerate(output):
            if item["type"] == "message":
                yield {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": index,
                    "item": dict(item, status="in_progress", content=[]),
                }
                for n, word in enumerate(_words(step.text)):
                    yield {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "delta": word,
                        "logprobs": [],
                    }
                    if n == 0 and step.hold is not None:
                        step.hold.wait(30)
                yield {
                    "type": "response.output_text.done",
                    "sequence_number": next(seq),
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "text": step.text,
                    "logprobs": [],
                }
            else:
                yield {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": index,
                    "item": dict(item, status="in_progress"),
                }
            yield {
                "type": "response.output_item.done",
                "sequence_number": next(seq),
                "output_index": index,
                "item": item,
            }
        end = "response.incomplete" if step.cut else "response.completed"
        yield {"type": end, "sequence_number": next(seq), "response": response}

    # --- Chat Completions -------------------------------------------------------------------

    def chat(self, body: dict[str, Any]) -> Iterator[Any]:
        self._check_chat_messages(body.get("messages") or [])
        for key in ("max_completion_tokens", "max_tokens"):
            if key in body and (not isinstance(body[key], int) or body[key] < 1):
                raise ApiError(400, f"Invalid '{key}'.", param=key)
        for tool in body.get("tools") or []:
            function = tool.get("function") or {}
            if tool.get("type") != "function" or not isinstance(function.get("name"), str):
                raise ApiError(400, "Invalid 'tools': each needs a function with a name.")
        step = self._next_step()
        if step.check is not None:
            step.check(body)
        if step.status != 200:
            raise ApiError(step.status, step.message or "scripted failure")
        return self._chat_events(body, step)

    @staticmethod
    def _check_chat_messages(messages: list[dict[str, Any]]) -> None:
        pending: list[str] = []
        for message in messages:
            role = message.get("role")
            if role not in ("system", "user", "assistant", "tool"):
                raise ApiError(400, f"Invalid 'messages[].role': {role!r}.")
            if role == "tool":
                call_id = message.get("tool_call_id")
                if call_id not in pending:
                    raise ApiError(
                        400,
                        "Invalid parameter: messages with role 'tool' must be a "
                        "response to a preceeding message with 'tool_calls'.",
                    )
                pending.remove(call_id)
                continue
            if pending:
                raise ApiError(
                    400,
                    "An assistant message with 'tool_calls' must be followed by "
                    "tool messages responding to each 'tool_call_id'. The following "
                    f"tool_call_ids did not have response messages: {pending[0]}",
                )
            if role == "assistant":
                pending = [c["id"] for c in message.get("tool_calls") or []]
        if pending:
            raise ApiError(
                400, f"The following tool_call_ids did not have response messages: {pending[0]}"
            )

    def _chat_events(self, body: dict[str, Any], step: Step) -> Iterator[Any]:
        completion_id = self.new_id("chatcmpl")
        calls = [
            ("shell", json.dumps({k: v for k, v in c.items() if k != "call_id"}))
            for c in step.calls
        ] + list(step.raw_calls)
        tool_calls = [
            {
                "id": self.new_id("call"),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            for name, arguments in calls
        ]
        usage = step.usage or _usage(body.get("messages") or [], step)
        usage_json = {
            "prompt_tokens": usage["input_tokens"],
            "prompt_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
            "completion_tokens": usage["output_tokens"],
            "completion_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
            "total_tokens": usage["input_tokens"] + usage["output_tokens"],
        }
        finish = "length" if step.cut else "tool_calls" if tool_calls else "stop"
        base = {"id": completion_id, "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": step.text or None}
            if tool_calls:
                message["tool_calls"] = tool_calls
            yield dict(
                base,
                object="chat.completion",
                usage=usage_json,
                choices=[{"index": 0, "message": message, "finish_reason": finish}],
            )
            return

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return dict(
                base,
                object="chat.completion.chunk",
                choices=[{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            )

        yield chunk({"role": "assistant", "content": ""})
        for n, word in enumerate(_words(step.text)):
            yield chunk({"content": word})
            if n == 0 and step.hold is not None:
                step.hold.wait(30)
        if step.whole_tool_calls:
            # Some compatible servers send each call whole, without an "index".
            for call in tool_calls:
                yield chunk({"tool_calls": [call]})
            tool_calls = []
        for index, call in enumerate(tool_calls):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {
                                "name": call["function"]["name"],
                                "arguments": arguments[:half],
                            },
                        }
                    ]
                }
            )
            yield chunk(
                {"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]}
            )
        yield chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            yield dict(base, object="chat.completion.chunk", choices=[], usage=usage_json)
        yield "[DONE]"


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]] if text else []


def _usage(conversation: Any, step: Step) -> dict[str, int]:
    """A rough token count like a real provider's: about four characters per token."""
    return {
        "input_tokens": len(json.dumps(conversation)) // 4,
        "output_tokens": max(1, (len(step.text) + len(json.dumps(step.calls))) // 4),
    }
