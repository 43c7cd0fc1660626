"""The events of an API request's prompt cell, as the openai SDK's shapes.

Pure functions and one fold (``ResponseFold``), no database: ``feed`` takes the cell's event
messages (``events.log.event_message`` dicts) in seq order and returns the stream events they
make (``response.output_item.added``, ``response.output_text.delta``, ...), each with its
``sequence_number``; ``response`` is the ``Response`` object as it stands. The JSON answer, the
SSE stream and ``GET /v1/responses/{id}`` all come from the same fold over the same log, so an
item's id and index are the same in all three.

Mapping (see docs/api.md "## Responses"): ``agent.text`` deltas and ``agent.message`` -> a
``message`` item with one ``output_text`` part; a shell ``agent.tool_call`` -> ``shell_call``
and its ``agent.output`` / ``agent.tool_result`` -> ``shell_call_output``; a client function
``agent.tool_call`` -> ``function_call``; ``agent.response`` -> usage; ``agent.turn_finished``
and ``cell.finished`` -> the final status.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from agentide.events import registry

# How a turn's end reason maps onto the Response's status.
COMPLETED_REASONS = ("final", "function_call")
INCOMPLETE_REASONS = ("max_output_tokens",)
# Cell statuses that end the request (sessions.models.Cell.DONE).
DONE_STATUSES = ("finished", "failed", "cancelled", "interrupted")
CELL_FINISHED = registry.CELL_FINISHED


@dataclass
class RequestEcho:
    """What the request asked for, echoed in every Response object."""

    id: str
    created_at: float
    model: str
    instructions: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    previous_response_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    max_output_tokens: int | None = None
    store: bool = True
    background: bool = False


def item_id(prefix: str, response_id: str, seq: int) -> str:
    """A stable output item id: the response's token and the seq of the event that opened it."""
    return f"{prefix}_{response_id.removeprefix('resp_')}{seq:08d}"


def usage_object(usage: dict[str, Any]) -> dict[str, Any]:
    """Our usage payload (``agents.backends.base.Usage.as_dict``) as ``ResponseUsage``."""
    input_tokens = int(usage.get("input_tokens", 0))
    output_tokens = int(usage.get("output_tokens", 0))
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": int(usage.get("cached_tokens", 0)),
            "cache_write_tokens": 0,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": int(usage.get("reasoning_tokens", 0))},
        "total_tokens": input_tokens + output_tokens,
    }


def outcome_object(outcome: str, exit_code: int | None) -> dict[str, Any]:
    """A command's end as the SDK's shell outcome (exit or timeout)."""
    if outcome == "timeout":
        return {"type": "timeout"}
    return {"type": "exit", "exit_code": exit_code if exit_code is not None else -1}


def input_item_object(item: dict[str, Any], item_id_: str) -> dict[str, Any]:
    """One normalised input item (``api.request``'s ``input``) as the SDK's ``ResponseItem``."""
    if item["type"] == "function_call_output":
        return {
            "id": item_id_,
            "type": "function_call_output",
            "call_id": item["call_id"],
            "output": item["output"],
            "status": "completed",
        }
    if item["role"] == "assistant":
        return {
            "id": item_id_,
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": item["content"], "annotations": []}],
        }
    return {
        "id": item_id_,
        "type": "message",
        "role": item["role"],
        "status": "completed",
        "content": [{"type": "input_text", "text": item["content"]}],
    }


@dataclass
class _Open:
    """An output item under way: its index in ``output`` and what it has so far."""

    index: int
    kind: str  # "message" | "shell_output"
    text: str = ""
    step: int = 0
    call_id: str = ""


class ResponseFold:
    """The Response of one API request, built from its cell's events in seq order."""

    def __init__(self, echo: RequestEcho) -> None:
        self.echo = echo
        self.output: list[dict[str, Any]] = []
        self.status = "in_progress"
        self.sequence = 0
        self.usage: dict[str, Any] = {}
        self.error: dict[str, Any] | None = None
        self.incomplete_reason = ""
        self.completed_at: float | None = None
        self.reason = ""
        self.last_seq = 0
        self.done = False
        self._message: _Open | None = None
        # call_id -> the open shell_call_output item
        self._outputs: dict[str, _Open] = {}
        self._calls: dict[str, dict[str, Any]] = {}
        self._error_message = ""

    # --- the Response object ------------------------------------------------------------------

    def response(self, *, status: str | None = None, output: bool = True) -> dict[str, Any]:
        """The ``Response`` as it stands (``status`` overrides, e.g. "queued" at creation)."""
        echo = self.echo
        return {
            "id": echo.id,
            "object": "response",
            "created_at": echo.created_at,
            "completed_at": self.completed_at,
            "status": status or self.status,
            "background": echo.background,
            "model": echo.model,
            "instructions": echo.instructions,
            "tools": echo.tools,
            "tool_choice": "auto",
            "parallel_tool_calls": True,
            "previous_response_id": echo.previous_response_id,
            "metadata": echo.metadata,
            "max_output_tokens": echo.max_output_tokens,
            "store": echo.store,
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "output": [dict(item) for item in self.output] if output else [],
            "usage": usage_object(self.usage) if self.usage else None,
            "error": self.error,
            "incomplete_details": (
                {"reason": self.incomplete_reason} if self.incomplete_reason else None
            ),
        }

    def opening_events(self) -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress``, the stream's first two events."""
        return [
            self._event("response.created", response=self.response(status="in_progress")),
            self._event("response.in_progress", response=self.response(status="in_progress")),
        ]

    # --- the fold -----------------------------------------------------------------------------

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Fold one event message of the cell; return the stream events it makes."""
        if self.done or event["seq"] <= self.last_seq:
            return []
        self.last_seq = event["seq"]
        type_, payload, seq = event["type"], event["payload"], event["seq"]
        out: list[dict[str, Any]] = []
        if type_ == registry.AGENT_TEXT:
            message = self._open_message(out, seq, payload["step"])
            out.append(self._text_delta(message, payload["text"]))
        elif type_ == registry.AGENT_MESSAGE:
            self._message_done(out, seq, payload)
        elif type_ == registry.AGENT_TOOL_CALL:
            self._close_message(out, "completed")
            if payload.get("client"):
                self._function_call(out, seq, payload)
            else:
                self._shell_call(out, seq, payload)
        elif type_ == registry.AGENT_OUTPUT:
            shell = self._outputs.get(payload["call_id"])
            if shell is not None:
                out.append(
                    self._event(
                        "response.shell_call_output_content.delta",
                        output_index=shell.index,
                        item_id=self.output[shell.index]["id"],
                        command_index=payload["index"],
                        delta={"stdout": payload["text"], "stderr": ""},
                    )
                )
        elif type_ == registry.AGENT_TOOL_RESULT:
            self._shell_result(out, payload)
        elif type_ == registry.AGENT_RESPONSE:
            self._add_usage(payload.get("usage") or {})
        elif type_ == registry.AGENT_ERROR:
            self._error_message = payload["message"]
        elif type_ == registry.AGENT_TURN_FINISHED:
            self.reason = payload["reason"]
            if payload.get("usage"):
                self.usage = dict(payload["usage"])
        elif type_ == CELL_FINISHED or (
            type_ == registry.CELL_CREATED and payload["status"] in DONE_STATUSES
        ):
            # A prompt refused at creation (no runner) is done at once, without cell.finished.
            self._finish(out, payload, event.get("created_at"))
        return out

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type_, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _add(self, out: list[dict[str, Any]], item: dict[str, Any]) -> int:
        index = len(self.output)
        self.output.append(item)
        out.append(self._event("response.output_item.added", output_index=index, item=dict(item)))
        return index

    def _item_done(self, out: list[dict[str, Any]], index: int) -> None:
        out.append(
            self._event(
                "response.output_item.done", output_index=index, item=dict(self.output[index])
            )
        )

    def _open_message(self, out: list[dict[str, Any]], seq: int, step: int) -> _Open:
        if self._message is not None and self._message.step == step:
            return self._message
        self._close_message(out, "completed")
        index = self._add(
            out,
            {
                "id": item_id("msg", self.echo.id, seq),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            },
        )
        self._message = _Open(index, "message", step=step)
        part = {"type": "output_text", "text": "", "annotations": []}
        self.output[index]["content"] = [dict(part)]
        out.append(
            self._event(
                "response.content_part.added",
                output_index=index,
                item_id=self.output[index]["id"],
                content_index=0,
                part=part,
            )
        )
        return self._message

    def _text_delta(self, message: _Open, text: str) -> dict[str, Any]:
        message.text += text
        item = self.output[message.index]
        item["content"] = [{"type": "output_text", "text": message.text, "annotations": []}]
        return self._event(
            "response.output_text.delta",
            output_index=message.index,
            item_id=item["id"],
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _message_done(self, out: list[dict[str, Any]], seq: int, payload: dict[str, Any]) -> None:
        text = payload["text"]
        message = self._open_message(out, seq, payload["step"])
        if text.startswith(message.text):
            if len(text) > len(message.text):
                out.append(self._text_delta(message, text[len(message.text) :]))
        else:
            # The whole text of the step is the truth where the deltas differ from it.
            message.text = text
            self.output[message.index]["content"][0]["text"] = text
        self._close_message(out, "incomplete" if payload.get("partial") else "completed")

    def _close_message(self, out: list[dict[str, Any]], status: str) -> None:
        message, self._message = self._message, None
        if message is None:
            return
        item = self.output[message.index]
        part = {"type": "output_text", "text": message.text, "annotations": []}
        item["content"] = [part]
        item["status"] = status
        out.append(
            self._event(
                "response.output_text.done",
                output_index=message.index,
                item_id=item["id"],
                content_index=0,
                text=message.text,
                logprobs=[],
            )
        )
        out.append(
            self._event(
                "response.content_part.done",
                output_index=message.index,
                item_id=item["id"],
                content_index=0,
                part=dict(part),
            )
        )
        self._item_done(out, message.index)

    def _function_call(self, out: list[dict[str, Any]], seq: int, payload: dict[str, Any]) -> None:
        item = {
            "id": item_id("fc", self.echo.id, seq),
            "type": "function_call",
            "call_id": payload["call_id"],
            "name": payload["name"],
            "arguments": "",
            "status": "in_progress",
        }
        index = self._add(out, item)
        arguments = payload["arguments"]
        out.append(
            self._event(
                "response.function_call_arguments.delta",
                output_index=index,
                item_id=item["id"],
                delta=arguments,
            )
        )
        out.append(
            self._event(
                "response.function_call_arguments.done",
                output_index=index,
                item_id=item["id"],
                arguments=arguments,
            )
        )
        self.output[index].update(arguments=arguments, status="completed")
        self._item_done(out, index)

    def _shell_call(self, out: list[dict[str, Any]], seq: int, payload: dict[str, Any]) -> None:
        commands = [str(c) for c in payload.get("commands") or ()]
        call_id = payload["call_id"]
        item = {
            "id": item_id("sh", self.echo.id, seq),
            "type": "shell_call",
            "call_id": call_id,
            "status": "in_progress",
            "action": {
                "commands": [],
                "timeout_ms": payload.get("timeout_ms"),
                "max_output_length": payload.get("max_output_length"),
            },
        }
        index = self._add(out, item)
        for command_index, command in enumerate(commands):
            common = {"output_index": index, "command_index": command_index}
            out.append(self._event("response.shell_call_command.added", command="", **common))
            out.append(self._event("response.shell_call_command.delta", delta=command, **common))
            out.append(self._event("response.shell_call_command.done", command=command, **common))
        self.output[index]["action"] = {**item["action"], "commands": commands}
        self.output[index]["status"] = "completed"
        self._item_done(out, index)
        self._calls[call_id] = self.output[index]
        output_index = self._add(
            out,
            {
                "id": item_id("sho", self.echo.id, seq),
                "type": "shell_call_output",
                "call_id": call_id,
                "status": "in_progress",
                "output": [],
                "max_output_length": payload.get("max_output_length"),
            },
        )
        self._outputs[call_id] = _Open(output_index, "shell_output", call_id=call_id)

    def _shell_result(self, out: list[dict[str, Any]], payload: dict[str, Any]) -> None:
        shell = self._outputs.pop(payload["call_id"], None)
        if shell is None:
            return
        outputs = [
            {
                "stdout": str(o.get("stdout", "")),
                "stderr": str(o.get("stderr", "")),
                "outcome": outcome_object(str(o.get("outcome", "")), o.get("exit_code")),
            }
            for o in payload.get("outputs") or ()
        ]
        if payload.get("error"):
            outputs.append(
                {"stdout": "", "stderr": payload["error"], "outcome": outcome_object("exit", 1)}
            )
        item = self.output[shell.index]
        for command_index, output in enumerate(outputs):
            out.append(
                self._event(
                    "response.shell_call_output_content.done",
                    output_index=shell.index,
                    item_id=item["id"],
                    command_index=command_index,
                    output=[output],
                )
            )
        item.update(output=outputs, status="completed")
        self._item_done(out, shell.index)

    def _add_usage(self, usage: dict[str, Any]) -> None:
        for name in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"):
            self.usage[name] = int(self.usage.get(name, 0)) + int(usage.get(name, 0) or 0)

    def _finish(
        self, out: list[dict[str, Any]], payload: dict[str, Any], created_at: str | None
    ) -> None:
        """The cell ended: close what is open and emit the terminal event."""
        self.done = True
        cell_status = payload["status"]
        # Items cut off by a stop end "incomplete" (the SDK wants every added item done).
        self._close_message(out, "incomplete" if cell_status != "finished" else "completed")
        for shell in self._outputs.values():
            self.output[shell.index]["status"] = "incomplete"
            self._item_done(out, shell.index)
        self._outputs.clear()
        reason = self.reason or ("final" if cell_status == "finished" else cell_status)
        if cell_status == "cancelled" or reason == "cancelled":
            self.status, terminal = "cancelled", "response.failed"
            self.error = {"code": "server_error", "message": "The response was cancelled."}
        elif reason in INCOMPLETE_REASONS:
            self.status, terminal = "incomplete", "response.incomplete"
            self.incomplete_reason = reason
        elif cell_status == "finished" and reason in COMPLETED_REASONS:
            self.status, terminal = "completed", "response.completed"
        else:
            self.status, terminal = "failed", "response.failed"
            message = self._error_message or payload.get("error") or f"The turn ended: {reason}."
            self.error = {
                "code": "rate_limit_exceeded" if reason == "quota" else "server_error",
                "message": message,
            }
        if created_at:
            self.completed_at = _timestamp(created_at)
        out.append(self._event(terminal, response=self.response()))


def _timestamp(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()
