"""Comments inside the live session page, and the shared terminal in transcripts.

The notebook's ``render_event`` hands ``annotation.*`` events here; ``_cell.html`` renders
``{% cell_comments cell.id %}``. Both use the same item template.

A run of consecutive ``terminal.*`` events becomes one ``TerminalLog``, which the transcript
page and the HTML export render with ``transcripts/_terminal.html`` and the Markdown export
with ``terminal_markdown``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.template.loader import render_to_string

from agentide.events import registry
from agentide.events.models import Event
from agentide.lib import ansi
from agentide.transcripts.models import Annotation


def cell_comments(cell_id: int, *, up_to: int | None = None) -> list[Annotation]:
    """The comments on events of cell ``cell_id`` whose ``annotation.added`` has a seq up to
    ``up_to`` (the page's last seq: later ones arrive over the websocket)."""
    added = Event.objects.filter(cell_id=cell_id, type=registry.ANNOTATION_ADDED)
    if up_to is not None:
        added = added.filter(seq__lte=up_to)
    rows = list(added.values_list("session_id", "seq"))
    if not rows:
        return []
    session_id = rows[0][0]
    annotations = Annotation.objects.filter(session_id=session_id, seq__in=[s for _, s in rows])
    return list(annotations.order_by("seq"))


def comments_by_cell(session_id: int, *, up_to: int) -> dict[int, list[Annotation]]:
    """Every comment on a cell's event in the session, by cell id, as of seq ``up_to``
    (two queries for a whole page instead of one per cell)."""
    added = dict(
        Event.objects.filter(
            session_id=session_id,
            type=registry.ANNOTATION_ADDED,
            seq__lte=up_to,
            cell__isnull=False,
        ).values_list("seq", "cell_id")
    )
    result: dict[int, list[Annotation]] = {}
    if not added:
        return result
    annotations = Annotation.objects.filter(session_id=session_id, seq__in=list(added))
    for annotation in annotations.order_by("seq"):
        result.setdefault(added[annotation.seq], []).append(annotation)
    return result


def render_comment_event(message: dict[str, Any], *, session_id: int) -> str:
    """The hx-swap-oob HTML that applies one ``annotation.*`` event to an open session page
    ("" for comments on events of no cell, which only the transcript shows)."""
    cell_id = message.get("cell_id")
    if not cell_id:
        return ""
    payload = message["payload"]
    if message["type"] == registry.ANNOTATION_ADDED:
        comment = {
            "seq": message["seq"],
            "target_seq": payload.get("target_seq"),
            "author_name": message.get("actor", ""),
            "body": payload.get("body", ""),
            "resolved": False,
        }
        context = {
            "comment": comment,
            "cell_id": cell_id,
            "session_id": session_id,
            "oob": "beforeend",
        }
    elif message["type"] == registry.ANNOTATION_RESOLVED:
        annotation = Annotation.objects.filter(
            session_id=session_id, seq=payload.get("annotation_seq")
        ).first()
        if annotation is None:
            return ""
        comment = {
            "seq": annotation.seq,
            "target_seq": annotation.target_seq,
            "author_name": annotation.author_name,
            "body": annotation.body,
            "resolved": bool(payload.get("resolved")),
        }
        context = {
            "comment": comment,
            "cell_id": cell_id,
            "session_id": session_id,
            "oob": "outerHTML",
        }
    else:
        return ""
    return render_to_string("transcripts/_comment_event.html", context)


# --- the shared terminal in transcripts -------------------------------------------------------

# The terminal's event types and the step of a terminal log each one is.
TERMINAL_STEPS = {
    registry.TERMINAL_OPENED: "opened",
    registry.TERMINAL_INPUT: "input",
    registry.TERMINAL_OUTPUT: "output",
    registry.TERMINAL_CLOSED: "closed",
}
TERMINAL_TYPES = frozenset(TERMINAL_STEPS)


@dataclass
class TerminalItem:
    """One step of a terminal log: ``kind`` is opened | input | closed (``rows`` holds that
    one event) or output (``rows`` holds consecutive output events, ``texts`` the part of
    each shown within the cap)."""

    kind: str
    rows: list[Any]
    texts: list[str] = field(default_factory=list)

    @property
    def row(self) -> Any:
        return self.rows[0]

    @property
    def shown(self) -> list[tuple[Any, str]]:
        return list(zip(self.rows, self.texts, strict=True))


@dataclass
class TerminalLog:
    """Consecutive terminal events of a transcript, in log order: opened, each line typed
    (attributed to who typed it), what the terminal printed, closed. Printed text past
    ``cap`` characters keeps its events' anchors but not its text; ``omitted_bytes`` says
    how much (UTF-8) was left out."""

    cap: int
    items: list[TerminalItem] = field(default_factory=list)
    chars: int = 0
    omitted_bytes: int = 0

    def add(self, row: Any) -> None:
        """Add one ``terminal.*`` row (a transcript ``Row``)."""
        kind = TERMINAL_STEPS[row.type]
        if kind != "output":
            self.items.append(TerminalItem(kind, [row]))
            return
        text = str(row.payload.get("text", ""))
        shown = text[: max(self.cap - self.chars, 0)]
        self.chars += len(text)
        self.omitted_bytes += len(text[len(shown) :].encode())
        last = self.items[-1] if self.items else None
        if last is None or last.kind != "output":
            last = TerminalItem("output", [])
            self.items.append(last)
        last.rows.append(row)
        last.texts.append(shown)

    @property
    def rows(self) -> list[Any]:
        return [row for item in self.items for row in item.rows]


def terminal_line(row: Any) -> str:
    """A ``terminal.input`` row's line as typed."""
    return str(row.payload.get("line", ""))


def terminal_markdown(log: TerminalLog) -> list[str]:
    """The Markdown lines of a terminal log: output as plain text (escape sequences
    dropped, CR overwrites applied), the lines typed with who typed them."""
    out: list[str] = []
    for item in log.items:
        row = item.row
        when = row.at.strftime("%Y-%m-%d %H:%M:%S UTC")
        who = _name(row)
        if item.kind == "opened":
            size = f"{row.payload.get('rows', '?')}x{row.payload.get('cols', '?')}"
            out += [f"### Terminal opened ({size}) · {when} (#{row.seq})", ""]
        elif item.kind == "input":
            out += [f"{who or 'someone'} typed (#{row.seq}): {_code(terminal_line(row))}", ""]
        elif item.kind == "output":
            text = ansi.plain_text("".join(item.texts))
            if text.strip():
                out += [_fence(text), ""]
        else:
            exit_code = row.payload.get("exit_code")
            how = f"exit {exit_code}" if exit_code is not None else row.payload.get("how", "")
            by = f" by {who}" if who else ""
            out += [f"*Terminal closed{by} ({how}) · {when} (#{row.seq})*", ""]
    if log.omitted_bytes:
        out += [f"*... {log.omitted_bytes} bytes of terminal output omitted*", ""]
    return out


def _name(row: Any) -> str:
    return f"{row.actor} (imported)" if row.imported and row.actor else str(row.actor)


def _code(text: str) -> str:
    """``text`` as a Markdown code span, whatever backticks it holds."""
    if not text.strip():
        return "(an empty line)"
    ticks = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{ticks} {text} {ticks}"


def _fence(text: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}\n{text.rstrip()}\n{ticks}"
