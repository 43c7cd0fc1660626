"""Export and import of transcripts: the portable JSONL format (``format``), and Markdown.

An import is all or nothing: the file is checked first, every event's type and payload
against ``agentide.events.registry``, then the read-only session is written in one
transaction."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from agentide.accounts.models import Membership
from agentide.accounts.services import require
from agentide.events import registry
from agentide.events.log import IMPORTED, IMPORTED_ACTOR, append_events
from agentide.events.models import Event
from agentide.lib import ansi
from agentide.projects.models import Project
from agentide.quotas import services as quotas
from agentide.sandboxes import checkpoints
from agentide.sandboxes.checkpoints import CheckpointError
from agentide.sandboxes.models import Checkpoint
from agentide.sessions import changes
from agentide.sessions.models import Cell, Session
from agentide.transcripts import format as jsonl
from agentide.transcripts.display import terminal_markdown
from agentide.transcripts.models import Annotation, TranscriptImport
from agentide.transcripts.view import Block, Row, TranscriptView, rows

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
    for row in rows(session):
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


def _logged_checkpoint_ids(payload: dict[str, Any], type_: str, kind: str = "") -> list[int]:
    """The checkpoint ids an event names: a ``cell.checkpoint``'s or a fork's
    ``checkpoint``, a restore cell's source."""
    if type_ == registry.CELL_CREATED and kind == Cell.Kind.RESTORE:
        source = str(payload.get("source", ""))
        return [int(source)] if source.isascii() and source.isdigit() else []
    if type_ in (registry.CELL_CHECKPOINT, registry.WORKSPACE_FORKED):
        checkpoint = payload.get("checkpoint")
        return [checkpoint] if isinstance(checkpoint, int) else []
    return []


def session_checkpoints(session: Session) -> QuerySet[Checkpoint]:
    """The session's checkpoints its log names (what a bundle of its transcript carries)."""
    named: set[int] = set()
    events = Event.objects.filter(
        session=session,
        type__in=(registry.CELL_CHECKPOINT, registry.WORKSPACE_FORKED, registry.CELL_CREATED),
    ).values_list("type", "payload")
    for type_, payload in events.iterator(chunk_size=2000):
        named.update(_logged_checkpoint_ids(payload, type_, str(payload.get("kind", ""))))
    return Checkpoint.objects.filter(session=session, pk__in=named).order_by("pk")


def export_checkpoints(session: Session) -> Iterator[bytes]:
    """The checkpoint bundle of the session's transcript (docs/checkpoints.md): every
    checkpoint its log names, with the files they hold, to import beside the JSONL."""
    return checkpoints.export_bundle(list(session_checkpoints(session)))


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
        elif block.cell_kind == Cell.Kind.RESTORE:
            out.append(f"Files restored to checkpoint {block.source or '(not imported)'}")
        else:
            out.append(block.source)
        out.extend(_files_markdown(view.session, block))
        for entry in block.entries:
            comments(entry.row)
        out.append("")
    return "\n".join(out) + "\n"


def _files_markdown(session: Session, block: Block) -> list[str]:
    """The "Files changed" lines of a cell block (nothing when its run changed no file)."""
    cell_id = block.first.cell_id
    if cell_id is None:
        return []
    files = changes.file_changes(session.pk, cell_id, block.cell_kind, block.checkpoints)
    if not files.any:
        return []
    diff = changes.cell_diff(session.pk, cell_id, block.cell_kind, max_text_bytes=0)
    out = ["", f"Files changed: +{files.added} \u2212{files.removed} ~{files.changed}", ""]
    for mark, entries in (("+", diff.added), ("\u2212", diff.removed), ("~", diff.changed)):
        out.extend(f"- {mark} {_code(str(entry.path))}" for entry in entries)
    if diff.left_out:
        out.append(f"- … and {diff.left_out} more")
    return out


def _code(text: str) -> str:
    """``text`` as a Markdown code span, whatever backticks or line breaks it holds."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    ticks = "`"
    while ticks in text:
        ticks += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _who(row: Row, default: str) -> str:
    """The row's actor for plain-text exports, marked when it is a name from an import."""
    name = row.actor or default
    return f"{name} (imported)" if row.imported and name else name


# --- import ---------------------------------------------------------------------------------

# A bundle's index is read here to match its cells to the imported ones.
MAX_BUNDLE_INDEX_BYTES = 64 * 1024 * 1024


def import_limit_bytes() -> int:
    return int(settings.TRANSCRIPT_IMPORT_MAX_BYTES)


def import_request_limit_bytes() -> int:
    """The largest import request: a transcript and its checkpoint bundle."""
    return import_limit_bytes() + bundle_limit_bytes()


def bundle_limit_bytes() -> int:
    """The largest checkpoint bundle an import may carry (a site setting)."""
    return int(settings.AGENTIDE_CHECKPOINT_MAX_BUNDLE_MB) * 1024 * 1024


def importable_projects(membership: Membership) -> QuerySet[Project]:
    return Project.objects.filter(team_id=membership.team_id).order_by("name")


def import_jsonl(
    actor: Membership,
    project: Project,
    data: bytes,
    *,
    title: str = "",
    bundle: IO[bytes] | None = None,
) -> Session:
    """Make a new read-only session in ``project`` from a JSONL transcript.

    All or nothing: the file is validated first (``TranscriptInvalid`` lists every bad
    line), then the session, its cells and every event (same seq, type, time, payload) are
    written in one transaction. Actor names stay plain text (payload ``_actor``), never
    linked to a user here, and every event is flagged as imported (payload ``_imported``);
    the session is flagged ``imported``, which every page shows whatever its title. Writers
    only.

    ``bundle``: the checkpoint bundle exported with the transcript (docs/checkpoints.md),
    verified and stored for the new session; the log's checkpoint ids are pointed at the
    stored ones (ids the bundle lacks become null), so diffs show and a fork starts from
    the right files. Without it, the log keeps the ids it names, which match nothing here.
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
            if item.type == registry.CELL_CREATED
        }
        Cell.objects.bulk_create(cells.values())
        if bundle is not None:
            stored = _import_bundle(session, bundle, cells)
            for item in parsed.events:
                _point_at_stored(item.type, item.payload, stored)
                if item.type == registry.CELL_CREATED and item.payload["kind"] == Cell.Kind.RESTORE:
                    cells[item.payload["position"]].source = item.payload["source"]
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
            if item.type == registry.CELL_CREATED:
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


def _import_bundle(session: Session, bundle: IO[bytes], cells: dict[int, Cell]) -> dict[int, int]:
    """Store the bundle's checkpoints for ``session``, each with its imported cell (``cells``
    by position): old id -> new id."""
    try:
        # Held to the site's bundle limit and to what the project's checkpoints may store.
        limit = min(
            bundle_limit_bytes(),
            checkpoints.storage_limit_bytes(session, quotas.sandbox_admission(session)),
        )
        mapping = checkpoints.import_bundle(
            session, bundle, cell_ids=_bundle_cell_ids(bundle, cells), max_bytes=limit
        )
    except CheckpointError as exc:
        raise jsonl.TranscriptInvalid([f"checkpoints: {exc.message}"]) from None
    return {int(old): checkpoint.pk for old, checkpoint in mapping.items()}


def _bundle_cell_ids(bundle: IO[bytes], cells: dict[int, Cell]) -> dict[int, int]:
    """The bundle's cell ids -> the imported cells' ids, matched by the positions its index
    gives (docs/checkpoints.md), so each checkpoint belongs to its cell here (a fork starts
    from the one taken before its prompt). Reads the index only, and rewinds; a bundle whose
    index cannot be read gets none (``import_bundle`` then says what is wrong with it)."""
    found: dict[int, int] = {}
    try:
        with tarfile.open(fileobj=bundle, mode="r|") as tar:
            member = tar.next()
            if (
                member is not None
                and member.name == f"{checkpoints.BUNDLE_DIR}/index.json"
                and member.isreg()
                and member.size <= MAX_BUNDLE_INDEX_BYTES
            ):
                content = tar.extractfile(member)
                index = json.loads(content.read()) if content is not None else {}
                for item in index.get("checkpoints", [])[: checkpoints.MAX_BUNDLE_CHECKPOINTS]:
                    old, position = item.get("cell_id"), item.get("cell_position")
                    if isinstance(old, int) and isinstance(position, int) and position in cells:
                        found[old] = cells[position].pk
    except (tarfile.TarError, ValueError, AttributeError, TypeError):
        found = {}
    finally:
        bundle.seek(0)
    return found


def _point_at_stored(type_: str, payload: dict[str, Any], stored: dict[int, int]) -> None:
    """Point the checkpoint ids an imported event names at the checkpoints stored from the
    bundle (null, or an empty source, for ids the bundle did not carry)."""
    if type_ == registry.CELL_CREATED and payload.get("kind") == Cell.Kind.RESTORE:
        source = str(payload.get("source", ""))
        new = stored.get(int(source)) if source.isascii() and source.isdigit() else None
        payload["source"] = str(new) if new is not None else ""
    elif type_ in (registry.CELL_CHECKPOINT, registry.WORKSPACE_FORKED):
        old = payload.get("checkpoint")
        payload["checkpoint"] = stored.get(old) if isinstance(old, int) else None


# Event types whose payload carries the cell's id (re-pointed at the imported cell).
_CELL_ID_TYPES = {
    registry.CELL_CREATED,
    registry.CELL_STARTED,
    registry.CELL_FINISHED,
    registry.CELL_CANCEL_REQUESTED,
}
_CELL_FIELDS = [
    "created_at", "source", "status", "outcome", "exit_code", "duration_ms", "error", "output",
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
    if type_ == registry.CELL_OUTPUT:
        output.append(str(payload.get("text", "")))
    elif type_ == registry.CELL_FINISHED:
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
        if event.type == registry.ANNOTATION_ADDED:
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
        elif (
            event.type == registry.ANNOTATION_RESOLVED and payload.get("annotation_seq") in comments
        ):
            comment = comments[payload["annotation_seq"]]
            comment.resolved = bool(payload.get("resolved"))
            comment.resolved_by_name = name if comment.resolved else ""
    return list(comments.values())
