"""The reviewer's view of a session: its event log folded into blocks, one per cell (agent
commands nested under their tool call) or per session-level event, in seq order."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings

from agentide.events import registry
from agentide.events.log import IMPORTED_ACTOR, is_imported_event
from agentide.events.models import Event
from agentide.sessions.models import Cell, Session
from agentide.transcripts.display import TERMINAL_TYPES, TerminalLog
from agentide.transcripts.models import Annotation

# --- the transcript view ----------------------------------------------------------------------

FAILED_STATUSES = {Cell.Status.FAILED, Cell.Status.CANCELLED, Cell.Status.INTERRUPTED}
# Blocks the transcript page renders at once; the rest load as the reader scrolls.
PAGE_BLOCKS = 50
FILTERS = {
    "all": "Everything",
    "commands": "Commands",
    "agent": "Agent",
    "failures": "Failures",
}


@dataclass
class Row:
    """One event as the transcript shows it."""

    seq: int
    type: str
    at: dt.datetime
    actor: str
    payload: dict[str, Any]
    cell_id: int | None
    comments: list[Annotation] = field(default_factory=list)
    # From an imported transcript: ``actor`` is the name recorded there, not a user here.
    imported: bool = False

    @property
    def anchor(self) -> str:
        return f"e-{self.seq}"

    @property
    def label(self) -> str:
        event_type = registry.TYPES.get(self.type)
        return (event_type.transcript if event_type else "") or self.type


@dataclass
class Output:
    """Output chunks with the transcript's display cap applied: ``shown`` chunks render,
    ``hidden`` chunks keep only their anchors."""

    shown: list[tuple[Row, str]] = field(default_factory=list)
    hidden: list[Row] = field(default_factory=list)
    chars: int = 0

    def add(self, row: Row, text: str, cap: int) -> None:
        room = cap - self.chars
        if room <= 0:
            self.hidden.append(row)
        else:
            self.shown.append((row, text[:room]))
        self.chars += len(text)

    @property
    def clipped(self) -> bool:
        return bool(self.hidden) or sum(len(t) for _, t in self.shown) < self.chars


@dataclass
class AgentCommand:
    """One command the agent ran, with its output and how it ended."""

    started: Row
    output: Output = field(default_factory=Output)
    finished: Row | None = None

    @property
    def command(self) -> str:
        return str(self.started.payload.get("command", ""))

    @property
    def exit_code(self) -> int | None:
        return self.finished.payload.get("exit_code") if self.finished else None

    @property
    def outcome(self) -> str:
        return str(self.finished.payload.get("outcome", "")) if self.finished else "running"

    @property
    def duration_ms(self) -> int | None:
        return self.finished.payload.get("duration_ms") if self.finished else None

    @property
    def failed(self) -> bool:
        return self.outcome != "exit" or self.exit_code not in (0, None)


@dataclass
class ToolCall:
    """A tool call of the model with the commands it ran and the result sent back."""

    row: Row
    commands: list[AgentCommand] = field(default_factory=list)
    result: Row | None = None


@dataclass
class Entry:
    """One item inside a cell block: ``kind`` is row | message | call | usage | delta |
    output (consecutive output chunks, starting with ``row``)."""

    kind: str
    row: Row
    call: ToolCall | None = None
    output: Output | None = None


@dataclass
class Block:
    """A cell with everything that happened to it, or one session-level event."""

    first: Row
    cell_kind: str = ""
    entries: list[Entry] = field(default_factory=list)
    # The cell's output size so far; its text is in the entries of kind "output".
    output: Output = field(default_factory=Output)
    finished: Row | None = None
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: Decimal = Decimal(0)
    calls: dict[str, ToolCall] = field(default_factory=dict)
    commands: dict[tuple[str, int], AgentCommand] = field(default_factory=dict)
    # A run of the shared terminal's events (no cell): ``first`` is its first event.
    terminal: TerminalLog | None = None
    # The payloads of the cell's ``cell.checkpoint`` events, by phase (before / after).
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def is_cell(self) -> bool:
        return bool(self.cell_kind)

    @property
    def position(self) -> int | None:
        return self.first.payload.get("position") if self.is_cell else None

    @property
    def source(self) -> str:
        return str(self.first.payload.get("source", ""))

    @property
    def status(self) -> str:
        if self.finished:
            return str(self.finished.payload.get("status", ""))
        return str(self.first.payload.get("status", ""))

    @property
    def exit_code(self) -> int | None:
        return self.finished.payload.get("exit_code") if self.finished else None

    @property
    def duration_ms(self) -> int | None:
        return self.finished.payload.get("duration_ms") if self.finished else None

    @property
    def error(self) -> str:
        source = self.finished or self.first
        return str(source.payload.get("error", ""))

    @property
    def output_chars(self) -> int:
        stored = self.finished.payload.get("output_chars", 0) if self.finished else 0
        return max(int(stored or 0), self.output.chars)

    @property
    def output_text(self) -> str:
        """The shell output the page shows (within the display cap)."""
        return "".join(text for e in self.entries if e.output for _, text in e.output.shown)

    @property
    def agent_commands(self) -> list[AgentCommand]:
        return list(self.commands.values())

    @property
    def answer(self) -> str:
        """The agent's last answer text in this cell."""
        texts = [e.row.payload.get("text", "") for e in self.entries if e.kind == "message"]
        return str(texts[-1]) if texts else ""

    @property
    def failed(self) -> bool:
        if not self.is_cell:
            return self.first.type in (registry.ERROR, registry.AGENT_ERROR)
        return (
            self.status in FAILED_STATUSES
            or self.exit_code not in (None, 0)
            or any(c.failed for c in self.commands.values())
        )

    def matches(self, show: str) -> bool:
        if show == "commands":
            # Shell cells, and prompts whose agent ran commands (the page then hides the
            # agent's other steps).
            shell = self.cell_kind == Cell.Kind.SHELL or self.terminal is not None
            return shell or bool(self.commands)
        if show == "agent":
            return self.cell_kind == Cell.Kind.PROMPT
        if show == "failures":
            return self.failed
        return True


@dataclass
class TranscriptView:
    session: Session
    blocks: list[Block]
    last_seq: int
    show: str
    event_count: int
    comment_count: int
    open_comments: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    title: str
    output_cap: int = 0
    # Which block (its index in ``blocks``) shows each event, by seq.
    block_of: dict[int, int] = field(default_factory=dict)

    @property
    def visible_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.matches(self.show)]


@dataclass
class Page:
    """A run of the visible blocks the page renders at once. ``earlier``/``later`` are the
    cursors (first seq of the first/last block shown) to load the blocks before/after it,
    None when there are none."""

    blocks: list[Block]
    earlier: int | None = None
    later: int | None = None


def page(
    view: TranscriptView,
    *,
    after: int | None = None,
    before: int | None = None,
    at: int | None = None,
    size: int = PAGE_BLOCKS,
) -> Page:
    """The page of ``view``'s visible blocks that follows the block starting at seq ``after``,
    or precedes the one starting at ``before``, or starts at the block showing event ``at``
    (from the top when that block is on the first page), or else the first page."""
    visible = view.visible_blocks

    def first_index(seq: int) -> int:
        return next((i for i, b in enumerate(visible) if b.first.seq >= seq), len(visible))

    if before is not None:
        end = first_index(before)
        start = max(0, end - size)
        return Page(visible[start:end], earlier=visible[start].first.seq if start else None)
    if after is not None:
        start = first_index(after + 1)
    elif at is not None and at in view.block_of:
        start = first_index(view.blocks[view.block_of[at]].first.seq)
        start = 0 if start < size else start
    else:
        start = 0
    end = start + size
    blocks = visible[start:end]
    return Page(
        blocks,
        earlier=blocks[0].first.seq if start and blocks and after is None else None,
        later=blocks[-1].first.seq if end < len(visible) else None,
    )


def rows(session: Session, *, up_to: int | None = None) -> Iterator[Row]:
    """The session's events in seq order (through seq ``up_to`` when given), as the
    transcript shows them."""
    events = (
        Event.objects.filter(session=session)
        .select_related("actor")
        .order_by("seq")
        .only("seq", "type", "payload", "cell_id", "created_at", "actor__username")
    )
    if up_to is not None:
        events = events.filter(seq__lte=up_to)
    for event in events.iterator(chunk_size=1000):
        imported = is_imported_event(event.payload)
        yield Row(
            seq=event.seq,
            type=event.type,
            at=event.created_at,
            actor=(
                str(event.payload.get(IMPORTED_ACTOR, ""))
                if imported
                else event.actor.username
                if event.actor_id and event.actor
                else ""
            ),
            payload=event.payload,
            cell_id=event.cell_id,
            imported=imported,
        )


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def _fold_agent(block: Block, row: Row, output_cap: int) -> None:
    payload = row.payload
    kind = row.type
    if kind == registry.AGENT_MESSAGE:
        block.entries.append(Entry("message", row))
    elif kind == registry.AGENT_TEXT:
        block.entries.append(Entry("delta", row))
    elif kind == registry.AGENT_TOOL_CALL:
        call = ToolCall(row=row)
        block.calls[str(payload.get("call_id", ""))] = call
        block.entries.append(Entry("call", row, call))
    elif kind == registry.AGENT_COMMAND_STARTED and str(payload.get("call_id")) in block.calls:
        command = AgentCommand(started=row)
        key = (str(payload.get("call_id")), int(payload.get("index", 0)))
        block.commands[key] = command
        block.calls[key[0]].commands.append(command)
    elif kind in (registry.AGENT_OUTPUT, registry.AGENT_COMMAND_FINISHED) and (
        (str(payload.get("call_id")), int(payload.get("index", 0))) in block.commands
    ):
        command = block.commands[(str(payload.get("call_id")), int(payload.get("index", 0)))]
        if kind == registry.AGENT_OUTPUT:
            command.output.add(row, str(payload.get("text", "")), output_cap)
        else:
            command.finished = row
    elif kind == registry.AGENT_TOOL_RESULT and str(payload.get("call_id")) in block.calls:
        block.calls[str(payload.get("call_id"))].result = row
    elif kind == registry.AGENT_RESPONSE:
        usage = payload.get("usage") or {}
        block.input_tokens += int(usage.get("input_tokens", 0) or 0)
        block.output_tokens += int(usage.get("output_tokens", 0) or 0)
        block.cached_tokens += int(usage.get("cached_tokens", 0) or 0)
        block.cost += _decimal(usage.get("cost", 0))
        block.model = str(usage.get("model", "") or block.model)
        block.entries.append(Entry("usage", row))
    elif kind == registry.AGENT_COMPACTION:
        usage = payload.get("usage") or {}
        block.cost += _decimal(usage.get("cost", 0))
        block.entries.append(Entry("row", row))
    else:
        if kind == registry.AGENT_REQUEST:
            block.model = str(payload.get("model", "") or block.model)
        block.entries.append(Entry("row", row))


def transcript_view(
    session: Session, *, show: str = "all", up_to: int | None = None
) -> TranscriptView:
    """Fold the session's whole event log into blocks for the transcript page.

    Each cell becomes a block of its events in seq order (agent commands nested under
    their tool call); events of no cell become blocks of their own; blocks are ordered by
    their first event. Every event appears exactly once, with the anchor ``e-<seq>``;
    a comment (``annotation.added``) appears under the event it is on. Output beyond
    ``TRANSCRIPT_OUTPUT_CHARS`` per command keeps its anchors but not its text.
    ``up_to`` folds the log as it was at that seq (what a page already loaded shows).
    """
    show = show if show in FILTERS else "all"
    cap = settings.TRANSCRIPT_OUTPUT_CHARS
    comments: dict[int, list[Annotation]] = {}
    stored = Annotation.objects.filter(session=session).order_by("seq")
    annotations = list(stored if up_to is None else stored.filter(seq__lte=up_to))
    for annotation in annotations:
        comments.setdefault(annotation.target_seq, []).append(annotation)
    blocks: list[Block] = []
    by_cell: dict[int, int] = {}  # cell id -> index of its block
    by_seq: dict[int, Row] = {}
    block_of: dict[int, int] = {}
    title = session.title
    last_seq = 0
    for row in rows(session, up_to=up_to):
        last_seq = row.seq
        by_seq[row.seq] = row
        row.comments = comments.get(row.seq, [])
        if row.type in (registry.ANNOTATION_ADDED, registry.ANNOTATION_RESOLVED):
            target = by_seq.get(int(row.payload.get("target_seq", 0) or 0))
            if (
                row.type == registry.ANNOTATION_ADDED
                and target is not None
                and any(c.seq == row.seq for c in target.comments)
            ):
                # the comment under its target is this event's rendering
                block_of[row.seq] = block_of[target.seq]
                continue
            owner = by_cell.get(target.cell_id) if target and target.cell_id else None
            if owner is not None:
                blocks[owner].entries.append(Entry("row", row))
                block_of[row.seq] = owner
                continue
        if row.type == registry.SESSION_RENAMED:
            title = str(row.payload.get("title", title))
        if row.type == registry.CELL_CREATED and row.cell_id is not None:
            by_cell[row.cell_id] = block_of[row.seq] = len(blocks)
            blocks.append(Block(first=row, cell_kind=str(row.payload.get("kind", ""))))
            continue
        if row.type in TERMINAL_TYPES:
            # Consecutive terminal events share a block, between the cells in log order.
            terminal = blocks[-1].terminal if blocks else None
            if terminal is None:
                terminal = TerminalLog(cap=cap)
                blocks.append(Block(first=row, terminal=terminal))
            terminal.add(row)
            block_of[row.seq] = len(blocks) - 1
            continue
        index = by_cell.get(row.cell_id) if row.cell_id is not None else None
        if index is None:
            block_of[row.seq] = len(blocks)
            blocks.append(Block(first=row))
            continue
        block_of[row.seq] = index
        block = blocks[index]
        if row.type == registry.CELL_OUTPUT:
            text = str(row.payload.get("text", ""))
            last = block.entries[-1] if block.entries else None
            if last is None or last.kind != "output" or last.output is None:
                last = Entry("output", row, output=Output())
                block.entries.append(last)
            assert last.output is not None
            # One cap per cell: the group gets what the cell's earlier groups left.
            last.output.add(row, text, cap - (block.output.chars - last.output.chars))
            block.output.chars += len(text)
        elif row.type == registry.CELL_FINISHED:
            block.finished = row
            block.entries.append(Entry("row", row))
        elif row.type in registry.AGENT_TYPES:
            _fold_agent(block, row, cap)
        elif row.type == registry.CELL_CHECKPOINT:
            block.checkpoints[str(row.payload.get("phase", ""))] = row.payload
            block.entries.append(Entry("row", row))
        else:
            block.entries.append(Entry("row", row))
    return TranscriptView(
        session=session,
        blocks=blocks,
        last_seq=last_seq,
        show=show,
        event_count=len(by_seq),
        comment_count=len(annotations),
        open_comments=sum(1 for a in annotations if not a.resolved),
        input_tokens=sum(b.input_tokens for b in blocks),
        output_tokens=sum(b.output_tokens for b in blocks),
        cost=sum((b.cost for b in blocks), Decimal(0)),
        title=title,
        output_cap=cap,
        block_of=block_of,
    )
