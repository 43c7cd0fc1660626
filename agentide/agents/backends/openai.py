"""The model backend on the official ``openai`` SDK: the only module that imports it.

Two API kinds:

- Responses: the native shell tool in local mode. ``shell_call`` items are answered with
  ``shell_call_output`` (one ``{stdout, stderr, outcome}`` per command, no ``status``);
  ``function_call`` items of a ``shell`` function are answered with ``function_call_output``.
- Chat Completions: a ``shell`` function tool; every ``tool_call`` of an assistant message is
  answered by a ``role: tool`` message.

An API request's ``TurnOptions`` add the client's function tools next to the shell tool (or
alone: the shell tool is offered only when asked for); the model's calls of them come back as
``FunctionCall``s and are answered later by the client's ``FunctionOutput``s (Responses
``function_call``/``function_call_output`` items; Chat ``tool_calls`` and ``tool`` messages).
The output cap goes up as Responses ``max_output_tokens`` and as Chat
``max_completion_tokens`` (OpenAI's name; its reasoning models refuse ``max_tokens``) plus
``max_tokens`` for other hosts (Ollama and LM Studio read only that one). A reply cut by it
(Responses status incomplete for ``max_output_tokens``, Chat finish_reason ``length``) is
``truncated``.

Transient failures (429, 5xx, timeouts, dropped connections) are retried with exponential
backoff by the SDK (``max_retries``, honouring ``Retry-After``) before a non-permanent
ModelError is raised; 4xx answers raise a permanent ModelError with the provider's message
(trimmed: it is shown to people). Requests go through ``egress.http_client``: destinations
checked at connect time, redirects never followed (a 3xx is a permanent error).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import openai

from agentide.agents.backends.base import (
    DEFAULT_OPTIONS,
    SHELL_FUNCTION_NAME,
    CommandOutput,
    FunctionCall,
    FunctionOutput,
    FunctionTool,
    HistoryItem,
    Message,
    ModelBackend,
    ModelCallCancelled,
    ModelError,
    ModelReply,
    ProviderConfig,
    ShellCall,
    ShellResult,
    TurnOptions,
    Usage,
)
from agentide.agents.backends.egress import EgressRefused, http_client

RESPONSES_SHELL_TOOL: dict[str, Any] = {"type": "shell", "environment": {"type": "local"}}
SHELL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "commands": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Shell commands to run in order in the session's container.",
        },
        "timeout_ms": {"type": "integer", "description": "Timeout of each command in ms."},
        "max_output_length": {
            "type": "integer",
            "description": "Maximum characters of output to return per command.",
        },
    },
    "required": ["commands"],
}
SHELL_DESCRIPTION = (
    "Run shell commands in the team's persistent Linux container (workspace /workspace). "
    "The working directory and exported variables persist between commands."
)
CHAT_SHELL_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": SHELL_FUNCTION_NAME,
        "description": SHELL_DESCRIPTION,
        "parameters": SHELL_PARAMETERS,
    },
}
_TRANSIENT_STATUS = {408, 409, 429}
# Chat endpoints that refuse ``max_tokens`` for some models (OpenAI's and Azure's).
_COMPLETION_TOKENS_ONLY_HOSTS = ("api.openai.com", ".openai.azure.com")


# How much of a provider's error text reaches people: the provider (a host of the project
# admin's choosing) must not be able to echo arbitrary content back at length.
ERROR_DETAIL_CHARS = 300

_clients: dict[tuple[Any, ...], openai.OpenAI] = {}
_clients_lock = threading.Lock()
_MAX_CLIENTS = 32


def _client(config: ProviderConfig) -> openai.OpenAI:
    """An SDK client for the endpoint and key, shared by the turns of this process.

    Building one costs ~0.3 s (TLS context, connection pool); clients are thread-safe.
    """
    key = (config.base_url, config.api_key, config.timeout_s, config.max_retries, config.egress)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if len(_clients) >= _MAX_CLIENTS:
                _clients.clear()  # keys or endpoints changed many times: start afresh
            client = _clients[key] = openai.OpenAI(
                api_key=config.api_key or "none",
                base_url=config.base_url or None,
                timeout=config.timeout_s,
                max_retries=config.max_retries,
                http_client=http_client(config.egress, timeout=config.timeout_s),
            )
        return client


def make_backend(config: ProviderConfig) -> ModelBackend:
    """Return the backend for ``config.kind``; one per turn (it tracks the reply streaming)."""
    if config.kind == "chat_completions":
        return ChatCompletionsBackend(config, _client(config))
    return ResponsesBackend(config, _client(config))


def parse_shell_arguments(call_id: str, name: str, arguments: str, form: Any) -> ShellCall:
    """Turn a function-style call into a ShellCall; bad arguments become ``error``."""

    def bad(why: str) -> ShellCall:
        return ShellCall(
            call_id=call_id, commands=(), form=form, name=name, arguments=arguments, error=why
        )

    if name != SHELL_FUNCTION_NAME:
        return bad(f"Unknown tool {name!r}: the only tool is {SHELL_FUNCTION_NAME!r}.")
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError as exc:
        return bad(f"The arguments are not valid JSON ({exc.msg} at {exc.pos}).")
    if not isinstance(args, dict):
        return bad("The arguments must be a JSON object.")
    commands = args.get("commands")
    if isinstance(commands, str):
        commands = [commands]
    if (
        not isinstance(commands, list)
        or not commands
        or not all(isinstance(c, str) and c.strip() for c in commands)
    ):
        return bad('"commands" must be a non-empty array of non-empty strings.')
    limits: dict[str, int | None] = {}
    for key in ("timeout_ms", "max_output_length"):
        value = args.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value <= 0
        ):
            return bad(f'"{key}" must be a positive integer.')
        limits[key] = value
    return ShellCall(
        call_id=call_id,
        commands=tuple(commands),
        form=form,
        timeout_ms=limits["timeout_ms"],
        max_output_length=limits["max_output_length"],
        name=name,
        arguments=arguments,
    )


def parse_call(
    call_id: str, name: str, arguments: str, form: Any, options: TurnOptions
) -> ShellCall | FunctionCall:
    """A function-style call of the model: a call of one of the client's function tools, or
    a shell call (with ``error`` set for bad arguments or a tool nobody offered)."""
    shell = options.shell and name == SHELL_FUNCTION_NAME
    if not shell and any(tool.name == name for tool in options.tools):
        return FunctionCall(call_id=call_id, name=name, arguments=arguments)
    if not shell and (options.tools or not options.shell):
        offered = [SHELL_FUNCTION_NAME] if options.shell else []
        offered += [tool.name for tool in options.tools]
        return ShellCall(
            call_id=call_id,
            commands=(),
            form=form,
            name=name,
            arguments=arguments,
            error=f"Unknown tool {clip(name, 80)!r}: the tools are "
            f"{', '.join(repr(n) for n in offered) or 'none'}.",
        )
    return parse_shell_arguments(call_id, name, arguments, form)


def _outputs_json(result: ShellResult) -> str:
    if result.error:
        return json.dumps({"error": result.error})
    return json.dumps({"results": [_output_dict(o) for o in result.outputs]})


def _output_dict(output: CommandOutput) -> dict[str, Any]:
    outcome: dict[str, Any] = (
        {"type": "timeout"}
        if output.outcome == "timeout"
        else {"type": "exit", "exit_code": output.exit_code if output.exit_code is not None else -1}
    )
    return {"stdout": output.stdout, "stderr": output.stderr, "outcome": outcome}


def clip(text: object, limit: int = ERROR_DETAIL_CHARS) -> str:
    """``text`` as one short line: control characters dropped, whitespace collapsed, cut to
    ``limit`` characters."""
    cleaned = "".join(
        " " if ch.isspace() else ch
        for ch in str(text)
        if ch.isspace() or unicodedata.category(ch)[0] != "C"
    )
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "\u2026"


def _error(exc: Exception) -> ModelError:
    if isinstance(exc, EgressRefused):
        return ModelError(str(exc), permanent=True)
    if isinstance(exc, openai.APIStatusError) and 300 <= exc.status_code < 400:
        location = clip(exc.response.headers.get("location", ""), 120) or "another address"
        return ModelError(
            f"Model provider error {exc.status_code}: it redirects to {location}; "
            "model requests never follow redirects (set the final URL as the base URL).",
            permanent=True,
            status_code=exc.status_code,
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = ""
        body = exc.body
        if isinstance(body, dict):
            inner = body.get("error", body)
            if isinstance(inner, dict):
                detail = str(inner.get("message") or "")
            elif isinstance(inner, str):
                detail = inner
        detail = clip(detail or exc.message)
        permanent = status < 500 and status not in _TRANSIENT_STATUS
        kind = {
            401: "the API key was refused",
            403: "access denied",
            404: "not found (is the model name right?)",
            429: "rate limited",
        }.get(status, "the request was refused" if permanent else "the provider failed")
        return ModelError(
            f"Model provider error {status}, {kind}: {detail}",
            permanent=permanent,
            status_code=status,
        )
    if isinstance(exc, openai.APITimeoutError):
        return ModelError("The model provider did not answer in time (retried).", permanent=False)
    if isinstance(exc, openai.APIConnectionError):
        return ModelError(
            f"Cannot reach the model provider (retried): {clip(exc.__cause__ or exc)}",
            permanent=False,
        )
    return ModelError(f"Unexpected model provider failure: {clip(exc)}", permanent=False)


class _Backend(ModelBackend):
    def __init__(self, config: ProviderConfig, client: openai.OpenAI) -> None:
        self.config = config
        self.client = client
        self._stream: Any = None
        self._aborted = threading.Event()

    def _open(self, stream: Any) -> Any:
        self._aborted.clear()
        self._stream = stream
        return stream

    def abort(self) -> None:
        self._aborted.set()
        stream = self._stream
        if stream is None:
            return
        # A read blocked on a quiet stream wakes only when its socket is shut down (closing
        # the response from this thread would wait for it).
        with contextlib.suppress(Exception):
            network = stream.response.extensions["network_stream"]
            network.get_extra_info("socket").shutdown(socket.SHUT_RDWR)

    def _failed(self, exc: Exception, text: list[str]) -> Exception:
        """The exception to raise for ``exc`` met while streaming."""
        if self._aborted.is_set():
            return ModelCallCancelled("".join(text))
        if isinstance(exc, (openai.OpenAIError, EgressRefused)):
            return _error(exc)
        return ModelError(f"The model stream broke off: {clip(exc)}", permanent=False)


class ResponsesBackend(_Backend):
    """The Responses API with the native shell tool."""

    def input_items(self, history: Iterable[HistoryItem]) -> list[dict[str, Any]]:
        """Responses input items for ``history``."""
        items: list[dict[str, Any]] = []
        for item in history:
            if isinstance(item, Message):
                items.append({"role": item.role, "content": item.text})
            elif isinstance(item, FunctionCall):
                items.append(
                    {
                        "type": "function_call",
                        "call_id": item.call_id,
                        "name": item.name,
                        "arguments": item.arguments,
                    }
                )
            elif isinstance(item, FunctionOutput):
                items.append(
                    {"type": "function_call_output", "call_id": item.call_id, "output": item.output}
                )
            elif isinstance(item, ShellCall):
                if item.form == "function_call":
                    items.append(
                        {
                            "type": "function_call",
                            "call_id": item.call_id,
                            "name": item.name,
                            "arguments": item.arguments,
                        }
                    )
                else:
                    action: dict[str, Any] = {"commands": list(item.commands)}
                    if item.timeout_ms is not None:
                        action["timeout_ms"] = item.timeout_ms
                    if item.max_output_length is not None:
                        action["max_output_length"] = item.max_output_length
                    items.append(
                        {
                            "type": "shell_call",
                            "call_id": item.call_id,
                            "action": action,
                            "status": "completed",
                        }
                    )
            elif item.form == "function_call":
                items.append(
                    {
                        "type": "function_call_output",
                        "call_id": item.call_id,
                        "output": _outputs_json(item),
                    }
                )
            else:
                outputs = (
                    [
                        {
                            "stdout": "",
                            "stderr": item.error,
                            "outcome": {"type": "exit", "exit_code": 1},
                        }
                    ]
                    if item.error
                    else [_output_dict(o) for o in item.outputs]
                )
                answer: dict[str, Any] = {
                    "type": "shell_call_output",
                    "call_id": item.call_id,
                    "output": outputs,
                }
                if item.max_output_length is not None:
                    answer["max_output_length"] = item.max_output_length
                items.append(answer)
        return items

    def respond(
        self,
        history: list[HistoryItem],
        *,
        previous_response_id: str = "",
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
        options: TurnOptions = DEFAULT_OPTIONS,
    ) -> ModelReply:
        kwargs: dict[str, Any] = {
            "model": self.config.model,
            "input": self.input_items(history),
            "store": self.config.stores_responses,
            "stream": True,
        }
        tools = [RESPONSES_SHELL_TOOL] if options.shell else []
        tools += [_responses_tool(tool) for tool in options.tools]
        if tools:
            kwargs["tools"] = tools
        instructions = _instructions(self.config, options)
        if instructions:
            kwargs["instructions"] = instructions
        if options.max_output_tokens is not None:
            kwargs["max_output_tokens"] = options.max_output_tokens
        if previous_response_id:
            kwargs["previous_response_id"] = previous_response_id
        text: list[str] = []
        final: dict[str, Any] | None = None
        try:
            # Events stay plain dicts (cast_to=object): building the SDK's pydantic model of
            # a whole Response for response.completed costs ~20 ms a step.
            stream = self._open(
                self.client.post(
                    "/responses",
                    body=kwargs,
                    cast_to=object,
                    stream=True,
                    stream_cls=openai.Stream[object],
                )
            )
            with stream:
                for raw in stream:
                    if should_stop():
                        raise ModelCallCancelled("".join(text))
                    event: dict[str, Any] = raw if isinstance(raw, dict) else {}
                    kind = event.get("type", "")
                    if kind == "response.output_text.delta":
                        delta = str(event.get("delta") or "")
                        text.append(delta)
                        on_text(delta)
                    elif kind in ("response.completed", "response.incomplete"):
                        final = event.get("response") or {}
                    elif kind == "response.failed":
                        error = (event.get("response") or {}).get("error") or {}
                        raise ModelError(
                            f"The model failed: {clip(error.get('message') or 'no reason')}",
                            permanent=False,
                        )
                    elif kind == "error":
                        raise ModelError(
                            f"The model stream failed: {clip(event.get('message', ''))}",
                            permanent=False,
                        )
        except (ModelError, ModelCallCancelled):
            raise
        except Exception as exc:
            raise self._failed(exc, text) from exc
        finally:
            self._stream = None
        if self._aborted.is_set():
            raise ModelCallCancelled("".join(text))
        if final is None:
            raise ModelError("The model stream ended without a response.", permanent=False)
        return self._reply(final, "".join(text), options)

    def _reply(
        self, response: dict[str, Any], streamed_text: str, options: TurnOptions
    ) -> ModelReply:
        """A ModelReply from a Responses ``response`` object (as JSON data)."""
        calls: list[ShellCall] = []
        client_calls: list[FunctionCall] = []
        texts: list[str] = []
        for item in response.get("output") or []:
            kind = item.get("type")
            if kind == "shell_call":
                action = item.get("action") or {}
                calls.append(
                    ShellCall(
                        call_id=str(item.get("call_id", "")),
                        commands=tuple(str(c) for c in action.get("commands") or ()),
                        form="shell_call",
                        timeout_ms=action.get("timeout_ms"),
                        max_output_length=action.get("max_output_length"),
                        error="" if options.shell else "The shell tool is not offered.",
                    )
                )
            elif kind == "function_call":
                call = parse_call(
                    str(item.get("call_id", "")),
                    str(item.get("name", "")),
                    str(item.get("arguments", "")),
                    "function_call",
                    options,
                )
                if isinstance(call, FunctionCall):
                    client_calls.append(call)
                else:
                    calls.append(call)
            elif kind == "message":
                for part in item.get("content") or []:
                    if part.get("type") == "output_text":
                        texts.append(str(part.get("text", "")))
        u = response.get("usage") or {}
        usage = Usage(
            input_tokens=u.get("input_tokens") or 0,
            cached_tokens=(u.get("input_tokens_details") or {}).get("cached_tokens") or 0,
            output_tokens=u.get("output_tokens") or 0,
            reasoning_tokens=(u.get("output_tokens_details") or {}).get("reasoning_tokens") or 0,
        )
        incomplete = response.get("incomplete_details") or {}
        return ModelReply(
            response_id=str(response.get("id", "")) if self.config.stores_responses else "",
            text="".join(texts) or streamed_text,
            calls=calls,
            usage=usage,
            client_calls=client_calls,
            truncated=response.get("status") == "incomplete"
            and incomplete.get("reason") == "max_output_tokens",
        )

    def complete(self, prompt: str) -> tuple[str, Usage]:
        body: dict[str, Any] = {"model": self.config.model, "input": prompt, "store": False}
        if self.config.instructions:
            body["instructions"] = self.config.instructions
        try:
            response = self.client.post("/responses", body=body, cast_to=object)
        except (openai.OpenAIError, EgressRefused) as exc:
            raise _error(exc) from exc
        reply = self._reply(response if isinstance(response, dict) else {}, "", DEFAULT_OPTIONS)
        return reply.text, reply.usage


class ChatCompletionsBackend(_Backend):
    """Chat Completions with a ``shell`` function tool, for OpenAI-compatible servers."""

    def messages(
        self, history: Iterable[HistoryItem], options: TurnOptions = DEFAULT_OPTIONS
    ) -> list[dict[str, Any]]:
        """Chat messages for ``history``: an assistant text followed by calls is one message;
        a ``developer`` message goes as ``system`` (what compatible servers know)."""
        messages: list[dict[str, Any]] = []
        instructions = _instructions(self.config, options)
        if instructions:
            messages.append({"role": "system", "content": instructions})
        for item in history:
            if isinstance(item, Message):
                role = "system" if item.role == "developer" else item.role
                messages.append({"role": role, "content": item.text})
            elif isinstance(item, FunctionOutput):
                messages.append(
                    {"role": "tool", "tool_call_id": item.call_id, "content": item.output}
                )
            elif isinstance(item, FunctionCall):
                _assistant(messages).setdefault("tool_calls", []).append(
                    {
                        "id": item.call_id,
                        "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments},
                    }
                )
            elif isinstance(item, ShellCall):
                last = _assistant(messages)
                arguments = item.arguments or json.dumps(
                    {
                        k: v
                        for k, v in (
                            ("commands", list(item.commands)),
                            ("timeout_ms", item.timeout_ms),
                            ("max_output_length", item.max_output_length),
                        )
                        if v is not None
                    }
                )
                last.setdefault("tool_calls", []).append(
                    {
                        "id": item.call_id,
                        "type": "function",
                        "function": {"name": item.name, "arguments": arguments},
                    }
                )
            else:
                messages.append(
                    {"role": "tool", "tool_call_id": item.call_id, "content": _outputs_json(item)}
                )
        return messages

    def respond(
        self,
        history: list[HistoryItem],
        *,
        previous_response_id: str = "",
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
        options: TurnOptions = DEFAULT_OPTIONS,
    ) -> ModelReply:
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage = Usage()
        truncated = False
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": self.messages(history, options),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        tools = [CHAT_SHELL_TOOL] if options.shell else []
        tools += [_chat_tool(tool) for tool in options.tools]
        if tools:
            body["tools"] = tools
        if options.max_output_tokens is not None:
            body["max_completion_tokens"] = options.max_output_tokens
            host = _host(self.config.base_url)
            if not host.endswith(_COMPLETION_TOKENS_ONLY_HOSTS):
                body["max_tokens"] = options.max_output_tokens
        try:
            # Plain dicts both ways: the SDK's request transform and chunk models cost more
            # than the whole step otherwise (they grow with the conversation).
            stream = self._open(
                self.client.post(
                    "/chat/completions",
                    body=body,
                    cast_to=object,
                    stream=True,
                    stream_cls=openai.Stream[object],
                )
            )
            with stream:
                for raw in stream:
                    if should_stop():
                        raise ModelCallCancelled("".join(text))
                    chunk: dict[str, Any] = raw if isinstance(raw, dict) else {}
                    if chunk.get("usage"):
                        usage = _chat_usage(chunk["usage"])
                    for choice in chunk.get("choices") or []:
                        if choice.get("finish_reason") == "length":
                            truncated = True
                        delta = choice.get("delta") or {}
                        content = delta.get("content")
                        if content:
                            text.append(content)
                            on_text(content)
                        for call in delta.get("tool_calls") or []:
                            slot = calls.setdefault(
                                _tool_call_index(call, calls),
                                {"id": "", "name": "", "arguments": ""},
                            )
                            if call.get("id"):
                                slot["id"] = call["id"]
                            function = call.get("function") or {}
                            slot["name"] += function.get("name") or ""
                            slot["arguments"] += function.get("arguments") or ""
        except ModelCallCancelled:
            raise
        except Exception as exc:
            raise self._failed(exc, text) from exc
        finally:
            self._stream = None
        if self._aborted.is_set():
            raise ModelCallCancelled("".join(text))
        reply = ModelReply(response_id="", text="".join(text), usage=usage, truncated=truncated)
        for index, slot in sorted(calls.items()):
            call = parse_call(
                slot["id"] or f"call_{index}", slot["name"], slot["arguments"], "tool_call", options
            )
            if isinstance(call, FunctionCall):
                reply.client_calls.append(call)
            else:
                reply.calls.append(call)
        return reply

    def complete(self, prompt: str) -> tuple[str, Usage]:
        messages: list[dict[str, Any]] = []
        if self.config.instructions:
            messages.append({"role": "system", "content": self.config.instructions})
        messages.append({"role": "user", "content": prompt})
        try:
            completion = self.client.post(
                "/chat/completions",
                body={"model": self.config.model, "messages": messages},
                cast_to=object,
            )
        except (openai.OpenAIError, EgressRefused) as exc:
            raise _error(exc) from exc
        data: dict[str, Any] = completion if isinstance(completion, dict) else {}
        choices = data.get("choices") or [{}]
        text = str((choices[0].get("message") or {}).get("content") or "")
        return text, _chat_usage(data.get("usage") or {})


def _instructions(config: ProviderConfig, options: TurnOptions) -> str:
    return config.instructions if options.instructions is None else options.instructions


def _responses_tool(tool: FunctionTool) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    }


def _chat_tool(tool: FunctionTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    if tool.strict:  # older compatible servers know no "strict"
        function["strict"] = True
    return {"type": "function", "function": function}


def _assistant(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message calls are added to: the last one, or a new one."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    messages.append({"role": "assistant", "content": None})
    return messages[-1]


def _host(base_url: str) -> str:
    """The host name of ``base_url`` ("" for none: the SDK's default, OpenAI's)."""
    return (urlsplit(base_url).hostname or "api.openai.com") if base_url else "api.openai.com"


def _tool_call_index(call: dict[str, Any], calls: dict[int, dict[str, str]]) -> int:
    """The slot of a streamed tool-call fragment: its ``index``, or, from servers that send
    none, a new slot for a new id and the latest slot otherwise."""
    if isinstance(call.get("index"), int):
        return int(call["index"])
    last = max(calls) if calls else -1
    if last < 0 or (call.get("id") and call["id"] != calls[last]["id"]):
        return last + 1
    return last


def _chat_usage(u: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=u.get("prompt_tokens") or 0,
        cached_tokens=(u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        output_tokens=u.get("completion_tokens") or 0,
        reasoning_tokens=(u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
    )
