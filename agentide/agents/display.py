"""What a prompt cell shows of its agent turn: events folded into blocks, and the HTML that
applies one new event to an open page.

A block is one of: the model's text of a step (streamed, then replaced by the final message
rendered as sanitised Markdown), a tool call with its commands (each with live output and
how it ended, and whether a person approved it), a usage line, a compaction note, an error,
the turn's totals.
``templates/agents/_block.html`` renders a block for the first page render and for live
updates alike; the small live pieces (a text delta, an output chunk, a command's end) are
``hx-swap-oob`` fragments of ``templates/agents/_event.html`` aimed at ids inside blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string

from agentide.events import registry
from agentide.events.models import Event

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def dom_id(value: Any) -> str:
    """A string safe inside an HTML id / CSS selector (call ids come from the model)."""
    return _UNSAFE.sub("_", str(value))[:80]


@dataclass
class CommandView:
    index: int
    command: str
    output: str = ""
    outcome: str = ""
    exit_code: int | None = None
    duration_ms: int | None = None
    approval: dict[str, Any] | None = None  # agent.approval_requested payload (+ "decision")


@dataclass
class Block:
    kind: str  # text | call | usage | compaction | error | finished
    cell_id: int
    key: str = ""
    text: str = ""
    final: bool = False
    commands: list[CommandView] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def dom_id(self) -> str:
        return f"agent-{self.cell_id}-{self.kind}-{dom_id(self.key)}"


def block_for(message: dict[str, Any]) -> Block | None:
    """The new block an event starts, if it starts one."""
    cell_id = int(message["cell_id"])
    payload = message["payload"]
    kind = message["type"]
    if kind == registry.AGENT_REQUEST:
        return Block("text", cell_id, key=str(payload.get("step", "")))
    if kind == registry.AGENT_TOOL_CALL:
        commands = [CommandView(i, c) for i, c in enumerate(payload.get("commands") or [])]
        return Block(
            "call",
            cell_id,
            key=payload["call_id"],
            commands=commands,
            text=payload.get("error", ""),
            payload=payload,
        )
    if kind == registry.AGENT_RESPONSE:
        return Block("usage", cell_id, key=str(payload.get("step", "")), payload=payload)
    if kind == registry.AGENT_COMPACTION:
        return Block("compaction", cell_id, key=str(message["seq"]), payload=payload)
    if kind == registry.AGENT_ERROR:
        return Block("error", cell_id, key=str(message["seq"]), text=payload.get("message", ""))
    if kind == registry.AGENT_TURN_FINISHED:
        return Block("finished", cell_id, key="turn", payload=payload)
    return None


def fold_blocks(cell_id: int, *, up_to: int | None = None) -> list[Block]:
    """The blocks of a prompt cell as of event ``up_to`` (all events when None)."""
    return fold_cells_blocks([cell_id], up_to=up_to).get(cell_id, [])


def fold_cells_blocks(cell_ids: list[int], *, up_to: int | None = None) -> dict[int, list[Block]]:
    """The blocks of each of the prompt cells ``cell_ids`` as of event ``up_to``, by cell id,
    in one query whatever the number of cells."""
    if not cell_ids:
        return {}
    events = Event.objects.filter(cell_id__in=cell_ids, type__startswith=registry.AGENT_PREFIX)
    if up_to is not None:
        events = events.filter(seq__lte=up_to)
    rows = events.order_by("seq").values_list("cell_id", "seq", "type", "payload")
    return fold_rows(rows.iterator(chunk_size=2000))


def fold_rows(rows: Iterable[tuple[int, int, str, dict[str, Any]]]) -> dict[int, list[Block]]:
    """Blocks by cell id from ``(cell_id, seq, type, payload)`` rows of ``agent.*`` events
    in seq order (read by the caller, e.g. with the rest of a notebook page)."""
    folds: dict[int, _Fold] = {}
    for cell_id, seq, kind, payload in rows:
        fold = folds.get(cell_id)
        if fold is None:
            fold = folds[cell_id] = _Fold()
        fold.apply({"seq": seq, "type": kind, "payload": payload, "cell_id": cell_id})
    return {cell_id: fold.blocks for cell_id, fold in folds.items()}


class _Fold:
    """The blocks of one prompt cell, built event by event."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.texts: dict[str, Block] = {}
        self.calls: dict[str, Block] = {}
        self.approvals: dict[str, dict[str, Any]] = {}

    def apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        payload = message["payload"]
        texts, calls, approvals = self.texts, self.calls, self.approvals
        block = block_for(message)
        if block is not None:
            self.blocks.append(block)
            if block.kind == "text":
                texts[block.key] = block
            elif block.kind == "call":
                calls[block.key] = block
            return
        step = str(payload.get("step", ""))
        if kind == registry.AGENT_TEXT and step in texts:
            texts[step].text += payload.get("text", "")
        elif kind == registry.AGENT_MESSAGE and step in texts:
            texts[step].text = payload.get("text", "")
            texts[step].final = True
        elif (
            kind in (registry.AGENT_OUTPUT, registry.AGENT_COMMAND_FINISHED)
            and payload.get("call_id") in calls
        ):
            commands = calls[payload["call_id"]].commands
            index = int(payload.get("index", 0))
            if index < len(commands):
                command = commands[index]
                if kind == registry.AGENT_OUTPUT:
                    command.output += payload.get("text", "")
                else:
                    command.outcome = payload.get("outcome", "")
                    command.exit_code = payload.get("exit_code")
                    command.duration_ms = payload.get("duration_ms")
        elif kind == registry.AGENT_APPROVAL_REQUESTED and payload.get("call_id") in calls:
            commands = calls[payload["call_id"]].commands
            index = int(payload.get("index", 0))
            if index < len(commands):
                commands[index].approval = approvals[str(payload["approval_id"])] = dict(payload)
        elif kind == registry.AGENT_APPROVAL_DECIDED and str(payload["approval_id"]) in approvals:
            approvals[str(payload["approval_id"])]["decision"] = payload
        elif (
            kind == registry.AGENT_TOOL_RESULT
            and payload.get("error")
            and payload["call_id"] in calls
        ):
            calls[payload["call_id"]].text = payload["error"]


def render_agent_event(message: dict[str, Any]) -> str:
    """The hx-swap-oob HTML that applies one ``agent.*`` event to an open session page
    ("" for events the page does not show)."""
    if message["type"] == registry.AGENT_APPROVAL_MODE:
        return render_to_string(
            "agents/_approval_mode.html",
            {
                "requires_approval": message["payload"].get("required"),
                "oob": True,
                "session_id": message["payload"].get("session_id"),
            },
        )
    if not message.get("cell_id"):
        return ""
    block = block_for(message)
    payload = message["payload"]
    context: dict[str, Any] = {
        "event": message,
        "payload": payload,
        "block": block,
        "cell_id": message["cell_id"],
        "step_id": dom_id(payload.get("step", "")),
        "call_id": dom_id(payload.get("call_id", "")),
        "approval_id": payload.get("approval_id"),
        "dom_cap": settings.NOTEBOOK_DOM_OUTPUT_CHARS,
    }
    return render_to_string("agents/_event.html", context)
