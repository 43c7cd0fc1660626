"""Transcript workflows: the reviewer's view of a session's event log, annotations,
export and import, search, and forks replayed on another model.

Everything here reads the event log; the only writes to it go through the notebook's
``append_event``. Access goes through ``get_transcript_for_user``: every member of the
session's team may read and annotate (reviewers included); other writes need a writer.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F, Func, Q, QuerySet, TextField, Value
from django.db.models.expressions import CombinedExpression
from django.http import Http404
from django.utils import timezone

from agentide.accounts.models import Membership, User
from agentide.accounts.services import require
from agentide.lib import ansi
from agentide.projects.models import Project
from agentide.quotas import services as quotas
from agentide.sessions.models import Cell, Event, Session
from agentide.sessions.services import (
    IMPORTED,
    IMPORTED_ACTOR,
    append_event,
    append_events,
    get_session_for_user,
    is_imported_event,
)
from agentide.transcripts import format as jsonl
from agentide.transcripts.display import TERMINAL_TYPES, TerminalLog, terminal_markdown
from agentide.transcripts.models import (
    ANNOTATION_ADDED,
    ANNOTATION_RESOLVED,
    Annotation,
    Fork,
    SearchCursor,
    SearchEntry,
    TranscriptImport,
)

log = logging.getLogger(__name__)

# --- access -----------------------------------------------------------------------------------


def get_transcript_for_user(
    user: User, session_id: int, *, write: bool = False
) -> tuple[Session, Membership]:
    """The session and the user's membership, for reading its transcript or annotating it
    (any member of the team, reviewers included). ``write`` (forking) needs a writer.

    Raises Http404 for sessions of other teams exactly as for missing ones, and
    PermissionDenied when ``write`` is asked of a reviewer.
    """
    return get_session_for_user(user, session_id, write=write)


def is_read_only(session: Session) -> bool:
    """True for sessions made by importing a transcript: nothing may run in them."""
    return TranscriptImport.objects.filter(session_id=session.pk).exists()


# --- the transcript view ----------------------------------------------------------------------

FAILED_STATUSES = {Cell.Status.FAILED, Cell.Status.CANCELLED, Cell.Status.INTERRUPTED}
FILTERS = {
    "all": "Everything",
    "commands": "Commands",
    "agent": "Agent",
    "failures": "Failures",
}
EVENT_LABELS = {
    "cell.created": "created",
    "cell.started": "started",
    "cell.output": "output",
    "cell.cancel_requested": "cancel requested",
    "cell.finished": "finished",
    "session.renamed": "session renamed",
    "sandbox.state": "sandbox",
    "error": "error",
    "agent.request": "model request",
    "agent.text": "streamed text",
    "agent.message": "answer",
    "agent.tool_call": "tool call",
    "agent.command_started": "command",
    "agent.output": "output",
    "agent.command_finished": "command finished",
    "agent.tool_result": "tool result",
    "agent.response": "model response",
    "agent.compaction": "compaction",
    "agent.error": "agent error",
    "agent.turn_finished": "turn finished",
    ANNOTATION_ADDED: "comment",
    ANNOTATION_RESOLVED: "comment resolved",
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
        return EVENT_LABELS.get(self.type, self.type)


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
            return self.first.type in ("error", "agent.error")
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

    @property
    def visible_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.matches(self.show)]


def _rows(session: Session) -> Iterator[Row]:
    events = (
        Event.objects.filter(session=session)
        .select_related("actor")
        .order_by("seq")
        .only("seq", "type", "payload", "cell_id", "created_at", "actor__username")
    )
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
    if kind == "agent.message":
        block.entries.append(Entry("message", row))
    elif kind == "agent.text":
        block.entries.append(Entry("delta", row))
    elif kind == "agent.tool_call":
        call = ToolCall(row=row)
        block.calls[str(payload.get("call_id", ""))] = call
        block.entries.append(Entry("call", row, call))
    elif kind == "agent.command_started" and str(payload.get("call_id")) in block.calls:
        command = AgentCommand(started=row)
        key = (str(payload.get("call_id")), int(payload.get("index", 0)))
        block.commands[key] = command
        block.calls[key[0]].commands.append(command)
    elif kind in ("agent.output", "agent.command_finished") and (
        (str(payload.get("call_id")), int(payload.get("index", 0))) in block.commands
    ):
        command = block.commands[(str(payload.get("call_id")), int(payload.get("index", 0)))]
        if kind == "agent.output":
            command.output.add(row, str(payload.get("text", "")), output_cap)
        else:
            command.finished = row
    elif kind == "agent.tool_result" and str(payload.get("call_id")) in block.calls:
        block.calls[str(payload.get("call_id"))].result = row
    elif kind == "agent.response":
        usage = payload.get("usage") or {}
        block.input_tokens += int(usage.get("input_tokens", 0) or 0)
        block.output_tokens += int(usage.get("output_tokens", 0) or 0)
        block.cached_tokens += int(usage.get("cached_tokens", 0) or 0)
        block.cost += _decimal(usage.get("cost", 0))
        block.model = str(usage.get("model", "") or block.model)
        block.entries.append(Entry("usage", row))
    elif kind == "agent.compaction":
        usage = payload.get("usage") or {}
        block.cost += _decimal(usage.get("cost", 0))
        block.entries.append(Entry("row", row))
    else:
        if kind == "agent.request":
            block.model = str(payload.get("model", "") or block.model)
        block.entries.append(Entry("row", row))


def transcript_view(session: Session, *, show: str = "all") -> TranscriptView:
    """Fold the session's whole event log into blocks for the transcript page.

    Each cell becomes a block of its events in seq order (agent commands nested under
    their tool call); events of no cell become blocks of their own; blocks are ordered by
    their first event. Every event appears exactly once, with the anchor ``e-<seq>``;
    a comment (``annotation.added``) appears under the event it is on. Output beyond
    ``TRANSCRIPT_OUTPUT_CHARS`` per command keeps its anchors but not its text.
    """
    show = show if show in FILTERS else "all"
    cap = settings.TRANSCRIPT_OUTPUT_CHARS
    comments: dict[int, list[Annotation]] = {}
    annotations = list(Annotation.objects.filter(session=session).order_by("seq"))
    for annotation in annotations:
        comments.setdefault(annotation.target_seq, []).append(annotation)
    blocks: list[Block] = []
    by_cell: dict[int, Block] = {}
    rows: dict[int, Row] = {}
    title = session.title
    last_seq = 0
    for row in _rows(session):
        last_seq = row.seq
        rows[row.seq] = row
        row.comments = comments.get(row.seq, [])
        if row.type in (ANNOTATION_ADDED, ANNOTATION_RESOLVED):
            target = rows.get(int(row.payload.get("target_seq", 0) or 0))
            if (
                row.type == ANNOTATION_ADDED
                and target is not None
                and any(c.seq == row.seq for c in target.comments)
            ):
                continue  # the comment under its target is this event's rendering
            owner = by_cell.get(target.cell_id) if target and target.cell_id else None
            if owner is not None:
                owner.entries.append(Entry("row", row))
                continue
        if row.type == "session.renamed":
            title = str(row.payload.get("title", title))
        if row.type == "cell.created" and row.cell_id is not None:
            block = Block(first=row, cell_kind=str(row.payload.get("kind", "")))
            by_cell[row.cell_id] = block
            blocks.append(block)
            continue
        if row.type in TERMINAL_TYPES:
            # Consecutive terminal events share a block, between the cells in log order.
            terminal = blocks[-1].terminal if blocks else None
            if terminal is None:
                terminal = TerminalLog(cap=cap)
                blocks.append(Block(first=row, terminal=terminal))
            terminal.add(row)
            continue
        block_or_none = by_cell.get(row.cell_id) if row.cell_id is not None else None
        if block_or_none is None:
            blocks.append(Block(first=row))
            continue
        block = block_or_none
        if row.type == "cell.output":
            text = str(row.payload.get("text", ""))
            last = block.entries[-1] if block.entries else None
            if last is None or last.kind != "output" or last.output is None:
                last = Entry("output", row, output=Output())
                block.entries.append(last)
            assert last.output is not None
            # One cap per cell: the group gets what the cell's earlier groups left.
            last.output.add(row, text, cap - (block.output.chars - last.output.chars))
            block.output.chars += len(text)
        elif row.type == "cell.finished":
            block.finished = row
            block.entries.append(Entry("row", row))
        elif row.type.startswith("agent."):
            _fold_agent(block, row, cap)
        else:
            block.entries.append(Entry("row", row))
    return TranscriptView(
        session=session,
        blocks=blocks,
        last_seq=last_seq,
        show=show,
        event_count=len(rows),
        comment_count=len(annotations),
        open_comments=sum(1 for a in annotations if not a.resolved),
        input_tokens=sum(b.input_tokens for b in blocks),
        output_tokens=sum(b.output_tokens for b in blocks),
        cost=sum((b.cost for b in blocks), Decimal(0)),
        title=title,
        output_cap=cap,
    )


# --- annotations ------------------------------------------------------------------------------


@transaction.atomic
def add_annotation(actor: Membership, session: Session, target_seq: int, body: str) -> Annotation:
    """Comment on the event ``target_seq`` of ``session``: appends ``annotation.added`` (on
    the target's cell, so it shows there live) and records the comment.

    Any member of the session's team may comment, reviewers included. Raises Http404 for
    another team's session or an event that does not exist, ValidationError for an empty
    or too long comment.
    """
    if actor.team_id != session.project.team_id:
        raise Http404("No such session.")
    body = body.strip()
    limit = settings.TRANSCRIPT_MAX_COMMENT_CHARS
    if not body:
        raise ValidationError({"body": "Write a comment first."})
    if len(body) > limit:
        raise ValidationError({"body": f"Keep comments under {limit} characters."})
    if "\x00" in body:
        raise ValidationError({"body": "The comment contains a NUL character."})
    target = Event.objects.filter(session=session, seq=target_seq).only("cell_id", "type").first()
    if target is None or target.type in (ANNOTATION_ADDED, ANNOTATION_RESOLVED):
        raise Http404("No such event.")
    event = append_event(
        session.pk,
        ANNOTATION_ADDED,
        {"target_seq": target_seq, "body": body},
        cell=target.cell_id,
        actor=actor.user,
    )
    return Annotation.objects.create(
        session=session,
        seq=event.seq,
        target_seq=target_seq,
        author=actor.user,
        author_name=actor.user.username,
        body=body,
        created_at=event.created_at,
    )


def get_annotation(session: Session, annotation_seq: int) -> Annotation:
    annotation = Annotation.objects.filter(session=session, seq=annotation_seq).first()
    if annotation is None:
        raise Http404("No such comment.")
    return annotation


@transaction.atomic
def set_annotation_resolved(
    actor: Membership, session: Session, annotation_seq: int, resolved: bool
) -> Annotation:
    """Mark a comment resolved (or open again) and append ``annotation.resolved``.

    Any member of the team may do this. A comment already in the asked state changes
    nothing and appends nothing.
    """
    if actor.team_id != session.project.team_id:
        raise Http404("No such session.")
    annotation = get_annotation(session, annotation_seq)
    changed = Annotation.objects.filter(pk=annotation.pk, resolved=not resolved).update(
        resolved=resolved, resolved_by_name=actor.user.username if resolved else ""
    )
    if changed:
        target_cell = (
            Event.objects.filter(session=session, seq=annotation.target_seq)
            .values_list("cell_id", flat=True)
            .first()
        )
        append_event(
            session.pk,
            ANNOTATION_RESOLVED,
            {
                "annotation_seq": annotation.seq,
                "target_seq": annotation.target_seq,
                "resolved": resolved,
            },
            cell=target_cell,
            actor=actor.user,
        )
        annotation.refresh_from_db()
    return annotation


# --- export ---------------------------------------------------------------------------------


def _cell_positions(session: Session) -> dict[int, int]:
    return dict(Cell.objects.filter(session=session).values_list("pk", "position"))


def session_metadata(session: Session) -> dict[str, Any]:
    """The header's ``session`` object."""
    project = session.project
    return {
        "title": session.title,
        "project": project.name,
        "team": project.team.name,
        "created_at": session.created_at.isoformat(),
        "created_by": session.created_by.username if session.created_by else None,
        "status": session.status,
        "imported": session.imported,
        "last_seq": session.last_seq,
        "source": {"application": "AgentIDE", "session_id": session.pk},
    }


def export_jsonl(session: Session) -> Iterator[str]:
    """The session as JSONL lines (each ending in a newline): the header, then every event
    in seq order. See docs/transcript-format.md."""
    positions = _cell_positions(session)
    yield jsonl.header_line(session_metadata(session), exported_at=timezone.now()) + "\n"
    for row in _rows(session):
        actor = row.actor or None
        yield (
            jsonl.event_line(
                seq=row.seq,
                type=row.type,
                at=row.at,
                actor=actor,
                cell=positions.get(row.cell_id) if row.cell_id else None,
                payload=row.payload,
            )
            + "\n"
        )


def export_markdown(view: TranscriptView) -> str:
    """A readable Markdown rendering of the transcript (commands, output, prompts, answers,
    comments)."""
    imported = view.session.imported
    out: list[str] = [f"# {view.title}" + (" (imported transcript)" if imported else ""), ""]
    project = view.session.project
    out.append(f"{project.team.name} / {project.name} · {view.event_count} events")
    out.append("")

    def fence(text: str) -> str:
        ticks = "```"
        while ticks in text:
            ticks += "`"
        return f"{ticks}\n{text.rstrip()}\n{ticks}"

    def comments(row: Row) -> None:
        for c in row.comments:
            state = "resolved" if c.resolved else "open"
            out.append(f"> **{c.author_name or 'someone'}** ({state}): {c.body}")
            out.append("")

    for block in view.blocks:
        first = block.first
        when = first.at.strftime("%Y-%m-%d %H:%M:%S UTC")
        if block.terminal is not None:
            out.extend(terminal_markdown(block.terminal))
            for row in block.terminal.rows:
                comments(row)
            continue
        if not block.is_cell:
            out.append(f"- `{first.type}` {_who(first, '')} {when} (#{first.seq})")
            comments(first)
            continue
        who = _who(first, "someone")
        out.append(f"## #{block.position} {block.cell_kind} by {who} · {when}")
        out.append("")
        comments(first)
        if block.cell_kind == Cell.Kind.SHELL:
            out.append(fence("$ " + block.source))
            text = ansi.plain_text(block.output_text)
            if text:
                out.append(fence(text))
            status = f"exit {block.exit_code}" if block.exit_code is not None else block.status
            out.append(f"*{status}*, {block.output_chars} characters of output")
        elif block.cell_kind == Cell.Kind.PROMPT:
            out.append(fence(block.source))
            for entry in block.entries:
                if entry.kind == "message":
                    out.append("")
                    out.append(str(entry.row.payload.get("text", "")))
                elif entry.kind == "call" and entry.call:
                    for command in entry.call.commands:
                        text = ansi.plain_text("".join(t for _, t in command.output.shown))
                        out.append(fence(f"$ {command.command}\n{text}"))
                        out.append(f"*{command.outcome} {command.exit_code}*")
            if block.model:
                out.append(
                    f"*{block.model}: {block.input_tokens} in / {block.output_tokens} out tokens,"
                    f" ${block.cost}*"
                )
        else:
            out.append(block.source)
        for entry in block.entries:
            comments(entry.row)
        out.append("")
    return "\n".join(out) + "\n"


def _who(row: Row, default: str) -> str:
    """The row's actor for plain-text exports, marked when it is a name from an import."""
    name = row.actor or default
    return f"{name} (imported)" if row.imported and name else name


# --- import ---------------------------------------------------------------------------------


def import_limit_bytes() -> int:
    return int(settings.TRANSCRIPT_IMPORT_MAX_BYTES)


def importable_projects(membership: Membership) -> QuerySet[Project]:
    return Project.objects.filter(team_id=membership.team_id).order_by("name")


def import_jsonl(actor: Membership, project: Project, data: bytes, *, title: str = "") -> Session:
    """Make a new read-only session in ``project`` from a JSONL transcript.

    All or nothing: the file is validated first (``TranscriptInvalid`` lists every bad
    line), then the session, its cells and every event (same seq, type, time, payload) are
    written in one transaction. Actor names stay plain text (payload ``_actor``), never
    linked to a user here, and every event is flagged as imported (payload ``_imported``);
    the session is flagged ``imported``, which every page shows whatever its title. Writers
    only.
    """
    require(actor, write=True)
    if project.team_id != actor.team_id:
        raise Http404("No such project.")
    parsed = jsonl.parse(
        data,
        max_bytes=settings.TRANSCRIPT_IMPORT_MAX_BYTES,
        max_events=settings.TRANSCRIPT_IMPORT_MAX_EVENTS,
    )
    meta = parsed.header.get("session") or {}
    title = (title.strip() or str(meta.get("title") or "Imported transcript"))[:120]
    with transaction.atomic():
        # Not the notebook's create_session: an imported session is born ended (nothing
        # runs in it), so it takes no active-session quota and gets no sandbox.
        session = Session.objects.create(
            project=project,
            title=title,
            created_by=actor.user,
            status=Session.Status.ENDED,
            imported=True,
        )
        TranscriptImport.objects.create(
            session=session, imported_by=actor.user, header=parsed.header
        )
        cells = {
            item.payload["position"]: _imported_cell(session, item.payload)
            for item in parsed.events
            if item.type == "cell.created"
        }
        Cell.objects.bulk_create(cells.values())
        outputs: dict[int, list[str]] = {position: [] for position in cells}
        events: list[Event] = []
        for item in parsed.events:
            payload = dict(item.payload)
            payload.pop(IMPORTED_ACTOR, None)
            if item.actor:
                payload[IMPORTED_ACTOR] = item.actor
            payload[IMPORTED] = True
            cell = cells.get(item.cell) if item.cell is not None else None
            if cell is not None:
                if item.type in _CELL_ID_TYPES:
                    payload["cell_id"] = cell.pk
                _fold_into_cell(cell, item.type, payload, outputs[cell.position])
            events.append(Event(type=item.type, payload=payload, cell=cell, actor=None))
        # A new session in this transaction: nobody can be watching it yet.
        created = append_events(session.pk, events, publish_live=False)
        for event, item in zip(created, parsed.events, strict=True):
            event.created_at = item.at
        Event.objects.bulk_update(created, ["created_at"], batch_size=1000)
        for item in parsed.events:
            if item.type == "cell.created":
                cells[item.payload["position"]].created_at = item.at
        for position, cell in cells.items():
            cell.output = "".join(outputs[position])
            if not cell.output_chars:
                cell.output_chars = len(cell.output)
            if not cell.is_done:
                # Nothing runs in an imported session: an unfinished cell stays unfinished.
                cell.status = Cell.Status.INTERRUPTED
        Cell.objects.bulk_update(cells.values(), _CELL_FIELDS, batch_size=500)
        Annotation.objects.bulk_create(_imported_annotations(session, created), batch_size=500)
    session.refresh_from_db()
    return session


# Event types whose payload carries the cell's id (re-pointed at the imported cell).
_CELL_ID_TYPES = {"cell.created", "cell.started", "cell.finished", "cell.cancel_requested"}
_CELL_FIELDS = [
    "created_at", "status", "outcome", "exit_code", "duration_ms", "error", "output",
    "output_chars", "output_truncated",
]  # fmt: skip


def _imported_cell(session: Session, payload: dict[str, Any]) -> Cell:
    return Cell(
        session=session,
        position=payload["position"],
        kind=payload["kind"],
        source=payload["source"],
        author=None,
        status=payload.get("status") or Cell.Status.QUEUED,
        error=str(payload.get("error", "")),
    )


def _fold_into_cell(cell: Cell, type_: str, payload: dict[str, Any], output: list[str]) -> None:
    if type_ == "cell.output":
        output.append(str(payload.get("text", "")))
    elif type_ == "cell.finished":
        cell.status = str(payload.get("status") or Cell.Status.FINISHED)
        cell.outcome = str(payload.get("outcome") or "")[:16]
        cell.exit_code = _int_in(payload.get("exit_code"), -(2**31), 2**31 - 1)
        cell.duration_ms = _int_in(payload.get("duration_ms"), 0, 2**31 - 1)
        cell.error = str(payload.get("error", ""))
        cell.output_chars = _int_in(payload.get("output_chars"), 0, 2**63 - 1) or 0
        cell.output_truncated = bool(payload.get("truncated"))


def _int_in(value: Any, low: int, high: int) -> int | None:
    """``value`` when it is an integer a database column from ``low`` to ``high`` can hold;
    None otherwise (the log keeps the value as it was)."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _imported_annotations(session: Session, events: list[Event]) -> list[Annotation]:
    """Comment rows for the ``annotation.*`` events, with their final resolved state."""
    comments: dict[int, Annotation] = {}
    for event in events:
        payload = event.payload
        name = str(payload.get(IMPORTED_ACTOR, ""))
        if event.type == ANNOTATION_ADDED:
            target = payload.get("target_seq")
            comments[event.seq] = Annotation(
                session=session,
                seq=event.seq,
                target_seq=_int_in(target, 0, 2**63 - 1) or 0,
                author=event.actor,
                author_name=name,
                body=str(payload.get("body", "")),
                created_at=event.created_at,
            )
        elif event.type == ANNOTATION_RESOLVED and payload.get("annotation_seq") in comments:
            comment = comments[payload["annotation_seq"]]
            comment.resolved = bool(payload.get("resolved"))
            comment.resolved_by_name = name if comment.resolved else ""
    return list(comments.values())


# --- search ---------------------------------------------------------------------------------

SNIPPET_CHARS = 160
MAX_ENTRY_CHARS = 200_000


def _entries_for(row: Row, session: Session, team_id: int) -> Iterable[SearchEntry]:
    payload = row.payload
    kind = ""
    text = ""
    if row.type == "cell.created":
        kind = {"shell": SearchEntry.Kind.COMMAND, "prompt": SearchEntry.Kind.PROMPT}.get(
            str(payload.get("kind")), SearchEntry.Kind.NOTE
        )
        text = str(payload.get("source", ""))
    elif row.type == "cell.output":
        kind, text = SearchEntry.Kind.OUTPUT, str(payload.get("text", ""))
    elif row.type == "agent.message":
        kind, text = SearchEntry.Kind.ANSWER, str(payload.get("text", ""))
    elif row.type == "agent.command_started":
        kind, text = SearchEntry.Kind.COMMAND, str(payload.get("command", ""))
    elif row.type == "agent.output":
        kind, text = SearchEntry.Kind.OUTPUT, str(payload.get("text", ""))
    elif row.type == ANNOTATION_ADDED:
        kind, text = SearchEntry.Kind.COMMENT, str(payload.get("body", ""))
    if kind and text.strip():
        yield SearchEntry(
            session=session, team_id=team_id, seq=row.seq, kind=kind, text=text[:MAX_ENTRY_CHARS]
        )


def index_session(session: Session) -> int:
    """Add the session's events after its search cursor to the index; return how many
    entries were added. Safe to call concurrently (the cursor row is locked)."""
    team_id = session.project.team_id
    with transaction.atomic():
        cursor, _ = SearchCursor.objects.select_for_update().get_or_create(session=session)
        events = (
            Event.objects.filter(session=session, seq__gt=cursor.indexed_seq)
            .order_by("seq")
            .only("seq", "type", "payload", "cell_id", "created_at")
        )
        entries: list[SearchEntry] = []
        last = cursor.indexed_seq
        for event in events.iterator(chunk_size=1000):
            last = event.seq
            row = Row(event.seq, event.type, event.created_at, "", event.payload, event.cell_id)
            entries.extend(_entries_for(row, session, team_id))
        if last == cursor.indexed_seq:
            return 0
        created = SearchEntry.objects.bulk_create(entries, batch_size=500)
        if connection.vendor == "postgresql" and created:
            SearchEntry.objects.filter(session=session, seq__gt=cursor.indexed_seq).update(
                vector=_search_vector()
            )
        SearchCursor.objects.filter(pk=cursor.pk).update(indexed_seq=last)
    return len(entries)


def _search_vector() -> CombinedExpression:
    """The text's words as PostgreSQL parses them, plus its words split at punctuation: the
    parser keeps ``/etc/hosts`` or ``a.b`` whole, and "hosts" should find them too."""
    config = settings.TRANSCRIPT_SEARCH_CONFIG
    split = Func(
        F("text"),
        Value(r"[^\w]+"),
        Value(" "),
        Value("g"),
        function="regexp_replace",
        output_field=TextField(),
    )
    return SearchVector("text", config=config) + SearchVector(split, config=config)


def refresh_search_index(team_id: int | None = None) -> int:
    """Bring the index of every session of the team (of every team for None) up to date;
    return how many entries were added."""
    sessions = Session.objects.all()
    cursors = SearchCursor.objects.filter(indexed_seq__gte=F("session__last_seq"))
    if team_id is not None:
        sessions = sessions.filter(project__team_id=team_id)
        cursors = cursors.filter(session__project__team_id=team_id)
    stale = sessions.exclude(pk__in=cursors.values("session_id")).select_related("project")
    return sum(index_session(session) for session in stale.iterator(chunk_size=200))


@dataclass
class SearchHit:
    session_id: int
    session_title: str
    project: str
    seq: int
    kind: str
    snippet: str
    imported: bool = False


def search(membership: Membership, query: str, *, limit: int = 50) -> list[SearchHit]:
    """Search the team's sessions (commands, outputs, prompts, answers, notes, comments).

    PostgreSQL: full-text search (websearch syntax) over the GIN-indexed vector, best
    matches first. Elsewhere: every word must appear (case-insensitive), newest first.
    Only sessions of ``membership``'s team are searched.
    """
    query = query.strip()[:200]
    if not query:
        return []
    refresh_search_index(membership.team_id)
    entries = SearchEntry.objects.filter(team_id=membership.team_id).select_related(
        "session__project"
    )
    if connection.vendor == "postgresql":
        sq = SearchQuery(query, search_type="websearch", config=settings.TRANSCRIPT_SEARCH_CONFIG)
        entries = entries.filter(vector=sq).annotate(rank=SearchRank(F("vector"), sq))
        entries = entries.order_by("-rank", "-session__last_activity_at", "seq")
    else:
        condition = Q()
        for word in query.split():
            condition &= Q(text__icontains=word)
        entries = entries.filter(condition).order_by("-session__last_activity_at", "seq")
    words = [w for w in re.split(r"\W+", query) if w]
    return [
        SearchHit(
            session_id=e.session_id,
            session_title=e.session.title,
            project=e.session.project.name,
            seq=e.seq,
            kind=e.kind,
            snippet=_snippet(e.text, words),
            imported=e.session.imported,
        )
        for e in entries[:limit]
    ]


def _snippet(text: str, words: list[str]) -> str:
    lowered = text.lower()
    positions = [p for p in (lowered.find(w.lower()) for w in words) if p >= 0]
    start = max(0, min(positions) - SNIPPET_CHARS // 3) if positions else 0
    piece = text[start : start + SNIPPET_CHARS]
    return ("…" if start else "") + piece + ("…" if start + SNIPPET_CHARS < len(text) else "")


# --- fork and replay ------------------------------------------------------------------------


def fork_targets(membership: Membership) -> list[tuple[Project, str]]:
    """The team's projects a fork may replay in, each with a label naming its model."""
    from agentide.agents.models import ModelProvider

    providers = {
        p.project_id: p for p in ModelProvider.objects.filter(project__team_id=membership.team_id)
    }
    targets = []
    for project in Project.objects.filter(team_id=membership.team_id).order_by("name"):
        provider = providers.get(project.pk)
        model = f"{provider.model} ({provider.get_kind_display()})" if provider else "no model"
        targets.append((project, f"{project.name} — {model}"))
    return targets


def fork_session(
    actor: Membership,
    session: Session,
    from_position: int,
    *,
    project: Project | None = None,
    title: str = "",
) -> Fork:
    """Fork ``session`` just before its prompt cell at ``from_position``.

    The new session (in ``project``, by default the same one) gets copies of the earlier
    cells and of their events, and of the session's other events before that prompt
    (comments are not copied; the agent's stored response ids are blanked, so the fork
    never chains into the original provider's state). After commit a task copies the
    workspace and re-submits the prompts from ``from_position`` on, which then run
    through the agent's turn loop against the fork's project's model.

    Writers only. Http404 for another team's session or project, or no prompt cell at
    ``from_position``; ValidationError while an earlier cell is still running.
    """
    from agentide.sessions.services import create_session
    from agentide.transcripts import tasks

    require(actor, write=True)
    project = project or session.project
    if session.project.team_id != actor.team_id or project.team_id != actor.team_id:
        raise Http404("No such session.")
    prompt = Cell.objects.filter(
        session=session, position=from_position, kind=Cell.Kind.PROMPT
    ).first()
    if prompt is None:
        raise Http404("No such prompt cell.")
    earlier = list(
        Cell.objects.filter(session=session, position__lt=from_position).order_by("position")
    )
    if any(not cell.is_done for cell in earlier):
        raise ValidationError("An earlier cell is still running: fork once it has finished.")
    created_seq = (
        Event.objects.filter(session=session, cell=prompt, type=Event.Type.CELL_CREATED)
        .values_list("seq", flat=True)
        .first()
    ) or 0
    title = (title.strip() or f"{session.title} · fork at #{from_position}")[:120]
    with transaction.atomic():
        forked = create_session(actor, project, title)
        copies: dict[int, Cell] = {}
        for cell in earlier:
            copies[cell.pk] = Cell.objects.create(
                session=forked,
                position=cell.position,
                kind=cell.kind,
                source=cell.source,
                author=cell.author,
                status=cell.status,
                outcome=cell.outcome,
                exit_code=cell.exit_code,
                error=cell.error,
                started_at=cell.started_at,
                finished_at=cell.finished_at,
                duration_ms=cell.duration_ms,
                output=cell.output,
                output_chars=cell.output_chars,
                output_truncated=cell.output_truncated,
            )
        history = (
            Event.objects.filter(session=session)
            .filter(Q(cell_id__in=list(copies)) | Q(cell__isnull=True, seq__lt=created_seq))
            .exclude(type__in=(ANNOTATION_ADDED, ANNOTATION_RESOLVED))
            .select_related("actor")
            .order_by("seq")
        )
        copied: list[Event] = []
        times: list[dt.datetime] = []
        for event in history.iterator(chunk_size=1000):
            payload = dict(event.payload)
            copy = copies.get(event.cell_id) if event.cell_id else None
            if copy is not None and "cell_id" in payload:
                payload["cell_id"] = copy.pk
            if event.type == "agent.response" and payload.get("response_id"):
                payload["response_id"] = ""
            copied.append(Event(type=event.type, payload=payload, cell=copy, actor=event.actor))
            times.append(event.created_at)
        # The fork was created in this transaction: nobody can be watching it yet.
        created = append_events(forked.pk, copied, publish_live=False)
        for new, at in zip(created, times, strict=True):
            new.created_at = at
        Event.objects.bulk_update(created, ["created_at"], batch_size=1000)
        for cell in earlier:
            copies[cell.pk].created_at = cell.created_at
        Cell.objects.bulk_update(list(copies.values()), ["created_at"], batch_size=500)
        fork = Fork.objects.create(
            session=forked,
            source=session,
            from_position=from_position,
            project=project,
            created_by=actor.user,
        )
        transaction.on_commit(lambda: tasks.replay_fork.delay(forked.pk))
    return fork


def replay_fork(fork_session_id: int) -> str:
    """Copy the source's workspace into the fork's sandbox, then submit the source's
    prompts from the fork point on, in order, as the forking user (the agent's task runs
    them one after another).

    Idempotent: only a ``pending`` fork is replayed ("replayed"); a redelivered task finds
    it claimed and returns "skipped". A workspace that cannot be copied is recorded on the
    fork and the prompts run on an empty workspace.
    """
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions.execution import submit_cell

    claimed = Fork.objects.filter(session_id=fork_session_id, status=Fork.Status.PENDING).update(
        status=Fork.Status.REPLAYING
    )
    if not claimed:
        return "skipped"
    fork = Fork.objects.select_related("session__project", "source", "created_by").get(
        session_id=fork_session_id
    )
    membership = (
        Membership.objects.filter(team_id=fork.session.project.team_id, user=fork.created_by)
        .select_related("team", "user")
        .first()
    )
    if membership is None or not membership.can_write:
        Fork.objects.filter(pk=fork.pk).update(
            status=Fork.Status.FAILED, workspace_error="The forking member left the team."
        )
        return "failed"
    try:
        sandboxes.copy_workspace(fork.source, fork.session,
                                 admission=quotas.sandbox_admission(fork.session))
    except Exception as exc:
        log.warning("copying the workspace of fork %s failed", fork.pk, exc_info=True)
        Fork.objects.filter(pk=fork.pk).update(workspace_error=str(getattr(exc, "message", exc)))
    else:
        Fork.objects.filter(pk=fork.pk).update(workspace_copied=True)
    prompts = Cell.objects.filter(
        session=fork.source, kind=Cell.Kind.PROMPT, position__gte=fork.from_position
    ).order_by("position")
    for prompt in prompts:
        submit_cell(membership, fork.session, Cell.Kind.PROMPT, prompt.source)
    return "replayed"


def get_fork_for_user(user: User, session_id: int) -> tuple[Fork, Membership]:
    """The fork record of session ``session_id`` (Http404 when it is no fork or not the
    user's team's) and the user's membership."""
    session, membership = get_transcript_for_user(user, session_id)
    fork = Fork.objects.filter(session=session).select_related("source__project").first()
    if fork is None or fork.source.project.team_id != membership.team_id:
        raise Http404("This session is not a fork.")
    return fork, membership


@dataclass
class TurnSide:
    """One run of a prompt, as the comparison shows it."""

    block: Block | None

    @property
    def commands(self) -> list[AgentCommand]:
        return self.block.agent_commands if self.block else []


@dataclass
class TurnPair:
    source: str
    original: TurnSide
    replay: TurnSide


@dataclass
class Comparison:
    fork: Fork
    original: TranscriptView
    replay: TranscriptView
    pairs: list[TurnPair]

    @property
    def original_model(self) -> str:
        return next(
            (
                p.original.block.model
                for p in self.pairs
                if p.original.block and p.original.block.model
            ),
            "",
        )

    @property
    def replay_model(self) -> str:
        return next(
            (p.replay.block.model for p in self.pairs if p.replay.block and p.replay.block.model),
            "",
        )

    def total(self, side: str, attr: str) -> Any:
        blocks = [getattr(p, side).block for p in self.pairs]
        return sum((getattr(b, attr) for b in blocks if b), Decimal(0) if attr == "cost" else 0)

    @property
    def totals(self) -> dict[str, dict[str, Any]]:
        return {
            side: {a: self.total(side, a) for a in ("input_tokens", "output_tokens", "cost")}
            for side in ("original", "replay")
        }


def compare_fork(fork: Fork) -> Comparison:
    """Pair the original's prompts from the fork point on with the fork's, turn by turn
    (by order: the fork re-submits them in the same order)."""
    original = transcript_view(fork.source)
    replay = transcript_view(fork.session)

    def prompts(view: TranscriptView) -> list[Block]:
        return [
            b
            for b in view.blocks
            if b.cell_kind == Cell.Kind.PROMPT and (b.position or 0) >= fork.from_position
        ]

    left, right = prompts(original), prompts(replay)
    pairs = []
    for index, block in enumerate(left):
        other = right[index] if index < len(right) else None
        pairs.append(
            TurnPair(source=block.source, original=TurnSide(block), replay=TurnSide(other))
        )
    return Comparison(fork=fork, original=original, replay=replay, pairs=pairs)
