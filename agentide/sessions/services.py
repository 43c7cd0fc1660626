"""Session workflows: the event log, cells and their scheduling, presence.

``append_event`` is the only writer of ``Event`` rows. Every other workflow here changes its
rows and appends the matching events in one transaction; after commit the event is published
to the session's channel-layer group, where consumers render it for their browsers. The
channel layer may drop messages: consumers fill gaps from the database by ``seq``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import import_module
from typing import Any, BinaryIO

from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import close_old_connections, connection, transaction
from django.db.models import F, QuerySet
from django.http import Http404
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from agentide.accounts.models import Membership, User
from agentide.accounts.services import require
from agentide.lib.ansi import StyleTracker
from agentide.lib.output import CappedOutput, StreamDecoder
from agentide.projects.models import Project
from agentide.quotas import services as quotas
from agentide.sandboxes.backends.base import FileStream, FileTooLarge, SandboxNotFound
from agentide.sessions.models import Cell, Event, Session, session_group

log = logging.getLogger(__name__)
_SessionStore = import_module(settings.SESSION_ENGINE).SessionStore

PROMPT_TASK = "agentide.agents.tasks.run_prompt_cell"
NO_MODEL_MESSAGE = "No model is configured for this project yet."
INTERRUPTED_MESSAGE = (
    "The worker running this command stopped responding (its lease expired), so the command "
    "was interrupted. Its output up to that point is kept above."
)


# --- access -----------------------------------------------------------------------------------


def get_session_for_user(
    user: User, session_id: int, *, write: bool = False
) -> tuple[Session, Membership]:
    """Return the session and the user's membership of its team.

    Raises Http404 when the session does not exist or belongs to a team the user is not in,
    and PermissionDenied when ``write`` is asked of a reviewer.
    """
    if not user.is_authenticated:
        raise Http404("No such session.")
    session = (
        Session.objects.select_related("project__team", "created_by")
        .filter(pk=session_id, project__team__memberships__user=user)
        .first()
    )
    if session is None:
        raise Http404("No such session.")
    membership = Membership.objects.select_related("team", "user").get(
        team_id=session.project.team_id, user=user
    )
    require(membership, write=write)
    return session, membership


def signed_in_user(user_id: int, session_key: str | None) -> User:
    """The user of the login session ``session_key`` as the database has it now.

    For connections that outlive the request that authenticated them (websockets): raises
    Http404 when the account is gone or deactivated, or when the login session is gone or no
    longer carries the user's current password hash (the password changed since: Django
    signs such sessions out).
    """
    user = User.objects.filter(pk=user_id, is_active=True).first()
    login = _SessionStore(session_key) if session_key else None
    if user is None or login is None or str(login.get(SESSION_KEY)) != str(user_id):
        raise Http404("No such session.")
    if not constant_time_compare(login.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()):
        raise Http404("No such session.")
    return user


def user_group(user_id: int) -> str:
    """The channel-layer group of every open socket of ``user_id``."""
    return f"notebook.user.{int(user_id)}"


def recheck_user_sockets(user_id: int) -> None:
    """Once the current transaction commits, make every open socket of ``user_id`` check its
    access again (its consumer closes it when access is gone). Never raises: a lost message
    is caught up by the socket's next heartbeat check."""

    def send() -> None:
        try:
            _group_send(user_group(user_id), {"type": "access.changed"})
        except Exception:
            log.warning("asking the sockets of user %s to re-check failed", user_id, exc_info=True)

    transaction.on_commit(send)


def get_cell(session: Session, cell_id: int) -> Cell:
    """The cell ``cell_id`` of ``session``; Http404 for a cell of another session."""
    cell = Cell.objects.select_related("author").filter(session=session, pk=cell_id).first()
    if cell is None:
        raise Http404("No such cell.")
    return cell


def sessions_for_project(project: Project) -> QuerySet[Session]:
    """The project's sessions, most recently active first."""
    return Session.objects.filter(project=project).select_related("created_by")


@transaction.atomic
def create_session(actor: Membership, project: Project, title: str = "") -> Session:
    """Open a new session in ``project``. Its sandbox is created on first need."""
    require(actor, write=True)
    if project.team_id != actor.team_id:
        raise Http404("No such project.")
    quotas.check_can_open_session(actor, project)
    title = title.strip() or f"Session {Session.objects.filter(project=project).count() + 1}"
    if len(title) > 120:
        raise ValidationError({"title": "Keep the title under 120 characters."})
    return Session.objects.create(project=project, title=title, created_by=actor.user)


@transaction.atomic
def delete_session(actor: Membership, session: Session) -> None:
    """Delete ``session`` with its cells and events, and remove its container and workspace.

    Owners and admins may delete any session of their team; members only the sessions they
    opened. Raises PermissionDenied otherwise (and for reviewers).
    """
    require(actor, write=True)
    if session.project.team_id != actor.team_id:
        raise Http404("No such session.")
    if not session.deletable_by(actor):
        raise PermissionDenied(
            "Only the person who opened a session, or the team's owners and admins, can delete it."
        )
    remove_session(session)


def remove_session(session: Session) -> None:
    """Remove the session's sandbox (container and volume), then the session's rows.

    When the engine cannot be reached the rows go anyway: the container keeps its labels and
    the reconciler removes it as an orphan once the engine answers again.
    """
    from agentide.sandboxes import services as sandboxes
    from agentide.sandboxes.backends.base import SandboxError

    try:
        sandboxes.destroy_sandbox(session)
    except SandboxError:
        log.warning("session %s: sandbox not removed now; reconcile will", session.pk)
    session.delete()


def rename_session(actor: Membership, session: Session, title: str) -> Session:
    """Give ``session`` a new title (writers only) and record it as an event."""
    require(actor, write=True)
    title = title.strip()
    if not title:
        raise ValidationError({"title": "The title cannot be empty."})
    if len(title) > 120:
        raise ValidationError({"title": "Keep the title under 120 characters."})
    Session.objects.filter(pk=session.pk).update(title=title)
    session.title = title
    append_event(session.pk, Event.Type.SESSION_RENAMED, {"title": title}, actor=actor.user)
    return session


# --- the event log ------------------------------------------------------------------------------


def append_event(
    session_id: int,
    type: str,
    payload: dict[str, Any] | None = None,
    *,
    cell: Cell | int | None = None,
    actor: User | None = None,
) -> Event:
    """Append one event to the session's log and return it.

    ``seq`` is the session's ``last_seq`` + 1, assigned under the session row's write lock
    (the UPDATE takes it on PostgreSQL and SQLite alike), so concurrent writers get
    contiguous, unique numbers in commit order. Runs in the caller's transaction (or its
    own); after commit the event is published to the session's group.
    """
    cell_id = cell.pk if isinstance(cell, Cell) else cell
    with transaction.atomic():
        now = timezone.now()
        locked = Session.objects.filter(pk=session_id).update(
            last_seq=F("last_seq") + 1, last_activity_at=now
        )
        if not locked:
            raise Http404("No such session.")
        seq = Session.objects.filter(pk=session_id).values_list("last_seq", flat=True).get()
        event = Event.objects.create(
            session_id=session_id,
            seq=seq,
            type=type,
            payload=payload or {},
            cell_id=cell_id,
            actor=actor,
        )
        message = event_message(event, actor=actor)
        transaction.on_commit(lambda: publish(session_id, message))
    return event


def append_events(
    session_id: int, events: list[Event], *, publish_live: bool = True
) -> list[Event]:
    """Append several events at once (an imported transcript, a fork's copied history) and
    return them saved.

    ``events`` are unsaved Events with type, payload, cell and actor set; they get the
    session's next ``len(events)`` seqs in list order, under the same row lock as
    ``append_event``, and are written in batched INSERTs. After commit each is published,
    unless ``publish_live`` is False (a session created in this transaction, which nobody
    can be watching yet).
    """
    if not events:
        return []
    with transaction.atomic():
        locked = Session.objects.filter(pk=session_id).update(
            last_seq=F("last_seq") + len(events), last_activity_at=timezone.now()
        )
        if not locked:
            raise Http404("No such session.")
        last = Session.objects.filter(pk=session_id).values_list("last_seq", flat=True).get()
        for offset, event in enumerate(events):
            event.session_id = session_id
            event.seq = last - len(events) + 1 + offset
        created = Event.objects.bulk_create(events, batch_size=1000)
        if publish_live:
            messages = [event_message(event) for event in created]

            def publish_all() -> None:
                for message in messages:
                    publish(session_id, message)

            transaction.on_commit(publish_all)
    return created


# An imported transcript's events keep their recorded actor name as plain text under
# IMPORTED_ACTOR and are flagged with IMPORTED; they are never linked to a user here.
IMPORTED = "_imported"
IMPORTED_ACTOR = "_actor"


def is_imported_event(payload: dict[str, Any]) -> bool:
    """True for an event that came from an imported transcript."""
    return payload.get(IMPORTED) is True

def event_message(event: Event, *, actor: User | None = None) -> dict[str, Any]:
    """The plain-data form of an event that goes over the channel layer and gets rendered."""
    who = actor if actor is not None else (event.actor if event.actor_id else None)
    imported = is_imported_event(event.payload)
    return {
        "seq": event.seq,
        "type": event.type,
        "payload": event.payload,
        "cell_id": event.cell_id,
        "actor": who.username if who else "",
        "actor_initials": who.initials if who else "",
        "imported": imported,
        "imported_actor": str(event.payload.get(IMPORTED_ACTOR, "")) if imported else "",
        "created_at": event.created_at.isoformat(),
    }



def events_after(
    session_id: int, after_seq: int, *, up_to: int | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Event messages of the session with ``after_seq < seq <= up_to``, in seq order, at
    most ``limit`` of them."""
    events = Event.objects.filter(session_id=session_id, seq__gt=after_seq).select_related("actor")
    if up_to is not None:
        events = events.filter(seq__lte=up_to)
    events = events.order_by("seq")
    if limit is not None:
        events = events[:limit]
    return [event_message(e) for e in events]


def publish(session_id: int, message: dict[str, Any]) -> None:
    """Send one event message to the session's group. Never raises: the log is the truth,
    and a consumer that misses a message catches up from the database."""
    try:
        _group_send(session_group(session_id), {"type": "session.event", "event": message})
    except Exception:
        log.warning(
            "publishing event %s of session %s failed", message["seq"], session_id, exc_info=True
        )


def publish_presence(session_id: int) -> None:
    try:
        _group_send(session_group(session_id), {"type": "presence.changed"})
    except Exception:
        log.warning("publishing presence of session %s failed", session_id, exc_info=True)


_publisher_lock = threading.Lock()
_publisher: tuple[int, asyncio.AbstractEventLoop, Any] | None = None


def _publisher_for_process() -> tuple[asyncio.AbstractEventLoop, Any]:
    """This process's event loop for channel-layer sends (in a daemon thread) and the layer
    instance it sends with.

    One long-lived loop keeps the layer's Redis connections open between sends; a fresh loop
    per send (``async_to_sync``) reconnected every time, ~3 ms an event. The layer instance is
    the publisher's own, so nothing else closing its connections (a consumer's loop ending)
    touches these. Made anew in a forked child (Celery's prefork pool): threads do not fork.
    """
    global _publisher
    with _publisher_lock:
        if _publisher is None or _publisher[0] != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="publisher", daemon=True)
            thread.start()
            layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
            _publisher = (os.getpid(), loop, layer)
        return _publisher[1], _publisher[2]


def _group_send(group: str, message: dict[str, Any]) -> None:
    """Send to a channel-layer group from sync code (also from a thread that runs a loop);
    waits for the send and raises what it raised."""
    if not settings.CHANNEL_LAYERS:
        return
    loop, layer = _publisher_for_process()
    future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
    future.result(timeout=30)


# --- cells --------------------------------------------------------------------------------------


def validate_source(kind: str, source: str) -> str:
    """Return the cleaned cell source or raise ValidationError with a readable message."""
    if kind not in Cell.Kind.values:
        raise ValidationError({"kind": f"Unknown cell kind {kind!r}."})
    limit = settings.NOTEBOOK_MAX_SOURCE_BYTES
    if len(source.encode("utf-8", errors="replace")) > limit:
        raise ValidationError(
            {"source": f"That is too long: cells are limited to {limit // 1024} KiB."}
        )
    if "\x00" in source:
        raise ValidationError({"source": "The input contains a NUL character."})
    if not source.strip():
        what = {"shell": "command", "prompt": "prompt", "note": "note"}[kind]
        raise ValidationError({"source": f"Enter a {what} first."})
    return source.strip("\n") if kind == Cell.Kind.SHELL else source.strip()


def _prompt_task() -> Any | None:
    """The agent's prompt-cell task, once the agents app provides it."""
    from celery import current_app

    try:
        import agentide.agents.tasks  # noqa: F401
    except ImportError:
        return None
    return current_app.tasks.get(PROMPT_TASK)


def submit_cell(actor: Membership, session: Session, kind: str, source: str) -> Cell:
    """Add a cell at the end of the notebook and queue its work.

    Shell cells are queued and run one at a time in position order by
    ``tasks.run_shell_cells`` (enqueued on commit). Notes are done at once. Prompt cells go
    to the agent task when the agents app provides it; until then they fail with a message
    saying no model is configured. Raises PermissionDenied for reviewers and
    ValidationError for empty or oversized input, and for a cell that would wait beyond
    ``AGENTIDE_MAX_QUEUED_CELLS_PER_SESSION`` queued cells in the session or
    ``AGENTIDE_MAX_QUEUED_CELLS_PER_USER`` of the author's across sessions (nothing is created).
    """
    require(actor, write=True)
    if actor.team_id != session.project.team_id:
        raise Http404("No such session.")
    if session.status == Session.Status.ENDED:
        raise ValidationError({"source": "This session has ended: nothing more runs in it."})
    source = validate_source(kind, source)
    quotas.check_can_run(actor, session, kind)
    prompt_task = _prompt_task() if kind == Cell.Kind.PROMPT else None
    with transaction.atomic():
        # Lock the session row first: positions are handed out under the same lock as seqs.
        Session.objects.filter(pk=session.pk).update(last_activity_at=timezone.now())
        last = Cell.objects.filter(session=session).order_by("-position").first()
        position = last.position + 1 if last else 1
        status = Cell.Status.QUEUED
        error = ""
        if kind == Cell.Kind.NOTE:
            status = Cell.Status.FINISHED
        elif kind == Cell.Kind.PROMPT and prompt_task is None:
            status, error = Cell.Status.FAILED, NO_MODEL_MESSAGE
        if status == Cell.Status.QUEUED:
            _check_queue_room(session, actor.user_id)
        cell = Cell.objects.create(
            session=session,
            position=position,
            kind=kind,
            source=source,
            author=actor.user,
            status=status,
            error=error,
        )
        append_event(
            session.pk, Event.Type.CELL_CREATED, _cell_payload(cell), cell=cell, actor=actor.user
        )
        if kind == Cell.Kind.SHELL:
            _enqueue_shell_cells(session.pk)
        elif prompt_task is not None:
            prompt_task.delay_on_commit(cell.pk)
    return cell


def _check_queue_room(session: Session, user_id: int) -> None:
    """Refuse one more queued cell beyond the queue bounds (ValidationError).

    Call under the session row's lock (so the session's count cannot race); the author's row
    is locked here for the count across their sessions.
    """
    per_session = settings.AGENTIDE_MAX_QUEUED_CELLS_PER_SESSION
    if Cell.objects.filter(session=session, status=Cell.Status.QUEUED).count() >= per_session:
        raise ValidationError(
            {
                "source": f"This session already has {per_session} cells waiting to run: "
                "wait for some to finish, or cancel some, then try again."
            }
        )
    per_user = settings.AGENTIDE_MAX_QUEUED_CELLS_PER_USER
    list(User.objects.select_for_update().filter(pk=user_id).values_list("pk"))
    if Cell.objects.filter(author_id=user_id, status=Cell.Status.QUEUED).count() >= per_user:
        raise ValidationError(
            {
                "source": f"You already have {per_user} cells waiting to run in your "
                "sessions: wait for some to finish, or cancel some, then try again."
            }
        )


def _enqueue_shell_cells(session_id: int) -> None:
    """Queue ``tasks.run_shell_cells`` for the session once the current transaction commits
    (``delay_on_commit``; written out because celery-types does not know it)."""
    from agentide.sessions.tasks import run_shell_cells

    transaction.on_commit(lambda: run_shell_cells.delay(session_id))


def _cell_payload(cell: Cell) -> dict[str, Any]:
    return {
        "cell_id": cell.pk,
        "position": cell.position,
        "kind": cell.kind,
        "source": cell.source,
        "status": cell.status,
        "error": cell.error,
    }


def cancel_cell(actor: Membership, session: Session, cell_id: int) -> Cell:
    """Cancel a queued cell at once, or ask the sandbox to kill a running one.

    A running cell ends ``cancelled`` when its command dies (the running task records it).
    Cancelling a cell that is already done changes nothing. PermissionDenied for reviewers.
    """
    require(actor, write=True)
    if actor.team_id != session.project.team_id:
        raise Http404("No such session.")
    cell = get_cell(session, cell_id)
    with transaction.atomic():
        if Cell.objects.filter(pk=cell.pk, status=Cell.Status.QUEUED).update(
            status=Cell.Status.CANCELLED, finished_at=timezone.now(), outcome="cancelled"
        ):
            cell.refresh_from_db()
            append_event(
                session.pk,
                Event.Type.CELL_FINISHED,
                _finish_payload(cell),
                cell=cell,
                actor=actor.user,
            )
            return cell
        if Cell.objects.filter(
            pk=cell.pk, status=Cell.Status.RUNNING, cancel_requested=False
        ).update(cancel_requested=True):
            append_event(
                session.pk,
                Event.Type.CELL_CANCEL_REQUESTED,
                {"cell_id": cell.pk, "status": Cell.Status.RUNNING},
                cell=cell,
                actor=actor.user,
            )
            transaction.on_commit(lambda: _kill_command(session, cell))
    cell.refresh_from_db()
    return cell


def _kill_command(session: Session, cell: Cell) -> bool:
    from agentide.sandboxes import services as sandboxes

    try:
        return bool(sandboxes.cancel_command(session, cell.command_id))
    except Exception:
        log.warning("cancelling %s failed", cell.command_id, exc_info=True)
        return False


def _finish_payload(cell: Cell) -> dict[str, Any]:
    return {
        "cell_id": cell.pk,
        "status": cell.status,
        "outcome": cell.outcome,
        "exit_code": cell.exit_code,
        "duration_ms": cell.duration_ms,
        "error": cell.error,
        "output_chars": cell.output_chars,
        "truncated": cell.output_truncated,
    }


def claim_next_cell(session_id: int, *, worker: str = "") -> Cell | None:
    """Claim the session's oldest queued cell if it is a shell cell and no cell of the
    session is running (a queued prompt cell first is the agent task's to claim).

    Returns the claimed cell (now ``running``, leased to ``worker``), or None when there is
    nothing to do or another worker runs a cell of this session. Safe under any number of
    concurrent callers: the claim happens under the session row's lock and is a conditional
    update of the cell's status.
    """
    with transaction.atomic():
        now = timezone.now()
        if not Session.objects.filter(pk=session_id).update(last_activity_at=now):
            return None
        if Cell.objects.filter(session_id=session_id, status=Cell.Status.RUNNING).exists():
            return None
        cell = (
            Cell.objects.filter(session_id=session_id, status=Cell.Status.QUEUED)
            .order_by("position")
            .first()
        )
        if cell is None or cell.kind != Cell.Kind.SHELL:
            # An earlier queued prompt goes first: the agent's task claims it.
            return None
        if not start_cell(cell, worker=worker, now=now):
            return None
    return cell


def start_cell(cell: Cell, *, worker: str, now: dt.datetime) -> bool:
    """Move a queued ``cell`` to ``running``, leased to ``worker``, and record it as an event.

    A conditional update: returns False (and changes nothing) when the cell is no longer
    queued. Call it inside the transaction that holds the session row's lock.
    """
    claimed = Cell.objects.filter(pk=cell.pk, status=Cell.Status.QUEUED).update(
        status=Cell.Status.RUNNING,
        started_at=now,
        lease_expires_at=now + dt.timedelta(seconds=settings.NOTEBOOK_LEASE_S),
        worker=worker[:200],
    )
    if not claimed:
        return False
    cell.refresh_from_db()
    append_event(
        cell.session_id,
        Event.Type.CELL_STARTED,
        {"cell_id": cell.pk, "status": Cell.Status.RUNNING},
        cell=cell,
    )
    return True


def finish_cell(
    cell: Cell,
    *,
    status: str,
    outcome: str = "",
    exit_code: int | None = None,
    error: str = "",
    output: CappedOutput | None = None,
    reported_by: dict[str, Any] | None = None,
) -> bool:
    """Record how a running cell ended and append ``cell.finished``.

    ``reported_by`` (who said how the command ended: the sandbox runner's command id and
    source, and its processes still running) goes into the event's payload as is, for audit.

    Returns False (changing nothing) when the cell is no longer ``running`` — e.g. the
    lease expired and it was already marked interrupted.
    """
    now = timezone.now()
    started = cell.started_at or now
    fields: dict[str, Any] = {
        "status": status,
        "outcome": outcome,
        "exit_code": exit_code,
        "error": error,
        "finished_at": now,
        "duration_ms": max(0, int((now - started).total_seconds() * 1000)),
        "lease_expires_at": None,
    }
    if output is not None:
        fields.update(
            output=output.text(),
            output_chars=output.total_chars,
            output_truncated=output.truncated,
        )
    with transaction.atomic():
        if not Cell.objects.filter(pk=cell.pk, status=Cell.Status.RUNNING).update(**fields):
            return False
        cell.refresh_from_db()
        payload = _finish_payload(cell)
        if reported_by:
            payload["reported_by"] = reported_by
        append_event(cell.session_id, Event.Type.CELL_FINISHED, payload, cell=cell)
    return True


def expire_stale_cells(*, now: dt.datetime | None = None) -> list[int]:
    """Mark running cells whose lease expired as ``interrupted``; return their ids.

    Also asks the sandbox to kill whatever the command left running and queues the next
    cell of each affected session.
    """
    now = now or timezone.now()
    expired = []
    stale = Cell.objects.filter(status=Cell.Status.RUNNING, lease_expires_at__lt=now)
    for cell in stale.select_related("session"):
        with transaction.atomic():
            done = Cell.objects.filter(
                pk=cell.pk, status=Cell.Status.RUNNING, lease_expires_at__lt=now
            ).update(
                status=Cell.Status.INTERRUPTED,
                error=INTERRUPTED_MESSAGE,
                finished_at=now,
                duration_ms=max(0, int((now - (cell.started_at or now)).total_seconds() * 1000)),
                lease_expires_at=None,
                output=_output_from_events(cell.pk),
            )
            if not done:
                continue
            cell.refresh_from_db()
            cell.output_chars = len(cell.output)
            Cell.objects.filter(pk=cell.pk).update(output_chars=cell.output_chars)
            append_event(
                cell.session_id, Event.Type.CELL_FINISHED, _finish_payload(cell), cell=cell
            )
            _enqueue_shell_cells(cell.session_id)
        _kill_command(cell.session, cell)
        expired.append(cell.pk)
    return expired


def _output_from_events(cell_id: int) -> str:
    texts = Event.objects.filter(cell_id=cell_id, type=Event.Type.CELL_OUTPUT).order_by("seq")
    return "".join(p.get("text", "") for p in texts.values_list("payload", flat=True))


def cell_output_text(cell: Cell) -> str:
    """The stored output of a cell: the capped copy once done, the events while running."""
    return cell.output if cell.is_done else _output_from_events(cell.pk)


# --- running a shell cell ------------------------------------------------------------------------


class OutputPump:
    """Coalesces output text into larger pieces for ``emit``.

    ``feed`` buffers text; a piece is emitted when ``max_chars`` have collected (from the
    feeding thread) or, from the pump's own thread, as soon as ``interval_s`` has passed since
    the previous piece: the first output of a command, or the first after a pause, goes out
    at once, and a steady stream at most once per interval. ``emit`` calls never overlap and
    keep feed order.
    ``close`` emits what is left and stops the thread.
    """

    def __init__(self, emit: Callable[[str], None], *, interval_s: float, max_chars: int) -> None:
        self._emit = emit
        self._interval = interval_s
        self._max = max_chars
        self._buffer: list[str] = []
        self._size = 0
        self._deadline = 0.0
        self._last_emit = -interval_s  # so the very first piece is not held back
        self._closed = False
        self._cond = threading.Condition()
        self._emit_lock = threading.Lock()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="output-pump", daemon=True)
        self._thread.start()

    def feed(self, text: str) -> None:
        if not text:
            return
        with self._cond:
            if not self._buffer:
                self._deadline = max(time.monotonic(), self._last_emit + self._interval)
            self._buffer.append(text)
            self._size += len(text)
            full = self._size >= self._max
            if not full:
                self._cond.notify()
        if full:
            self._flush()

    def _take(self) -> str:
        # Caller holds the condition.
        text = "".join(self._buffer)
        self._buffer, self._size = [], 0
        return text

    def _flush(self) -> None:
        with self._emit_lock:
            with self._cond:
                text = self._take()
                if text:
                    self._last_emit = time.monotonic()
            # One read from the sandbox can exceed max_chars: emit it in pieces.
            for start in range(0, len(text), self._max):
                self._call(text[start : start + self._max])

    def _call(self, text: str) -> None:
        try:
            self._emit(text)
        except BaseException as exc:  # recorded; the command keeps running
            log.exception("emitting output failed")
            self.error = exc

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._buffer and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    delay = self._deadline - time.monotonic()
                    if delay > 0:
                        self._cond.wait(delay)
                        continue
                self._flush()
        finally:
            connection.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        self._flush()


@dataclass
class _LiveOutput:
    """Turns coalesced text into output events: up to the head budget live, then the tail
    once at the end; everything lands first in the capped copy stored on the cell."""

    cell: Cell
    capture: CappedOutput
    tracker: StyleTracker = field(default_factory=StyleTracker)
    live_chars: int = 0
    held_back: bool = False

    def emit(self, text: str) -> None:
        # Stored first: whatever happens to styling or publishing, the output is kept.
        self.capture.append(text)
        try:
            sgr, text = self.tracker.split(text)
        except Exception:
            log.exception("styling output of cell %s failed; sending it unstyled", self.cell.pk)
            self.tracker = StyleTracker()
            sgr = ""
        self._write(sgr, text)

    def finish(self) -> None:
        sgr, text = self.tracker.flush()
        self._write(sgr, text)
        if self.capture.truncated:
            note = f"\n[... {self.capture.omitted_chars} characters omitted ...]\n"
            append_event(
                self.cell.session_id,
                Event.Type.CELL_OUTPUT,
                {"text": note + self.capture.tail, "sgr": "", "tail": True},
                cell=self.cell,
            )

    def _write(self, sgr: str, text: str) -> None:
        """Publish ``text`` (already in the capture) while the live budget lasts."""
        if not text:
            return
        room = self.capture.head_chars - self.live_chars
        if room <= 0:
            return
        piece = text[:room]
        self.live_chars += len(piece)
        append_event(
            self.cell.session_id,
            Event.Type.CELL_OUTPUT,
            {"text": piece, "sgr": sgr},
            cell=self.cell,
        )


class _Lease:
    """Renews the cell's lease while its command runs and notices cancel requests.

    Runs in its own thread; calls ``on_cancel`` once when the cell is marked for cancel or
    is no longer running (expired and taken over).
    """

    def __init__(self, cell: Cell, on_cancel: Callable[[], object]) -> None:
        self._cell = cell
        self._on_cancel = on_cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cell-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lease = settings.NOTEBOOK_LEASE_S
        renew_every = max(1.0, lease / 3)
        next_renew = time.monotonic() + renew_every
        killed = False
        try:
            while not self._stop.wait(settings.NOTEBOOK_CANCEL_POLL_S):
                row = (
                    Cell.objects.filter(pk=self._cell.pk)
                    .values("status", "cancel_requested")
                    .first()
                )
                taken_over = row is None or row["status"] != Cell.Status.RUNNING
                if (taken_over or (row and row["cancel_requested"])) and not killed:
                    # Until the command exists in the sandbox (it may still be starting)
                    # the kill finds nothing: keep trying on every poll.
                    killed = bool(self._on_cancel())
                if time.monotonic() >= next_renew and not taken_over:
                    self._cell.renew_lease(lease)
                    next_renew = time.monotonic() + renew_every
        except Exception:
            log.exception("lease thread of cell %s failed", self._cell.pk)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_cell(cell: Cell) -> None:
    """Run a claimed (``running``) shell cell in the session's sandbox to its end.

    Streams output as ``cell.output`` events, then records the result with ``finish_cell``:
    ``finished`` for exit code 0, ``failed`` for other exit codes, timeouts, OOM kills and
    sandbox errors, ``cancelled`` when cancelled. Waits for the sandbox to start if needed.
    """
    from agentide.sandboxes import services as sandboxes

    session = Session.objects.select_related("project__team").get(pk=cell.session_id)
    capture = CappedOutput(
        head_chars=settings.NOTEBOOK_OUTPUT_HEAD_CHARS,
        tail_chars=settings.NOTEBOOK_OUTPUT_TAIL_CHARS,
    )
    live = _LiveOutput(cell=cell, capture=capture)
    pump = OutputPump(
        live.emit,
        interval_s=settings.NOTEBOOK_OUTPUT_FLUSH_MS / 1000,
        max_chars=settings.NOTEBOOK_OUTPUT_FLUSH_CHARS,
    )
    decoders: dict[str, StreamDecoder] = {}

    def on_output(*args: Any) -> None:
        # The sandbox service passes decoded text; accept (stream, bytes) too.
        data = args[-1]
        if isinstance(data, bytes | bytearray):
            stream = str(args[0]) if len(args) > 1 else "stdout"
            data = decoders.setdefault(stream, StreamDecoder()).feed(bytes(data))
        pump.feed(data)

    _announce_sandbox_start(session)
    lease = _Lease(cell, on_cancel=lambda: _kill_command(session, cell))
    timeout_s = min(session.project.command_timeout_s, settings.NOTEBOOK_MAX_COMMAND_S)
    status, outcome, exit_code, error = Cell.Status.FAILED, "", None, ""
    reported_by: dict[str, Any] | None = None
    try:
        result = sandboxes.run_command(
            session,
            cell.source,
            command_id=cell.command_id,
            timeout_s=timeout_s,
            on_output=on_output,
        )
        outcome, exit_code = result.outcome, result.exit_code
        reported_by = {"source": result.source, "command_id": result.command_id,
                       "leftover_processes": result.leftover_processes}
        if outcome == "exit":
            status = Cell.Status.FINISHED if exit_code == 0 else Cell.Status.FAILED
        elif outcome == "cancelled":
            status = Cell.Status.CANCELLED
        elif outcome == "timeout":
            error = f"The command timed out after {timeout_s} seconds and was killed."
        elif outcome == "oom":
            error = "The command ran out of memory and was killed."
    except Exception as exc:
        # Includes Celery's soft time limit: make sure nothing keeps running in the sandbox.
        log.exception("running cell %s failed", cell.pk)
        error = f"The sandbox could not run this command: {getattr(exc, 'message', exc)}"
        _kill_command(session, cell)
    finally:
        lease.stop()
        for decoder in decoders.values():
            pump.feed(decoder.finish())
        pump.close()
        live.finish()
    cancelled = Cell.objects.filter(pk=cell.pk, cancel_requested=True).exists()
    if cancelled and status != Cell.Status.FINISHED:
        status, error = Cell.Status.CANCELLED, ""
    finish_cell(
        cell, status=status, outcome=outcome, exit_code=exit_code, error=error, output=capture,
        reported_by=reported_by,
    )


def _announce_sandbox_start(session: Session) -> None:
    """Say in the log that the sandbox is starting when a command has to wait for it (the
    sandbox service records ``running`` once it is up)."""
    from agentide.sandboxes.models import Sandbox

    state = Sandbox.objects.filter(session_id=session.pk).values_list("state", flat=True).first()
    if state != Sandbox.State.RUNNING:
        append_event(
            session.pk, Event.Type.SANDBOX_STATE, {"state": "starting", "was": state or "none"}
        )


def run_queued_cells(session_id: int, *, worker: str = "") -> int:
    """Run the session's queued shell cells one after another; return how many ran.

    Stops when nothing is queued or another worker is running a cell of the session (that
    worker continues the queue when its cell ends).
    """
    worker = worker or socket.gethostname()
    count = 0
    started = time.monotonic()
    budget = settings.CELERY_TASK_SOFT_TIME_LIMIT - 30
    while True:
        close_old_connections()
        if count and time.monotonic() - started + _longest_command_s(session_id) > budget:
            # The next command might not end within this task's time limit: hand the
            # queue over to a fresh task instead.
            from agentide.sessions.tasks import run_shell_cells

            run_shell_cells.delay(session_id)
            return count
        cell = claim_next_cell(session_id, worker=worker)
        if cell is None:
            if count:
                _start_waiting_prompt(session_id)
            return count
        run_cell(cell)
        count += 1


def _start_waiting_prompt(session_id: int) -> None:
    """After shell cells ended: if a prompt is next in the queue, start its task now rather
    than at that task's next retry (a duplicate task finds the cell claimed and stops)."""
    nxt = (
        Cell.objects.filter(session_id=session_id, status=Cell.Status.QUEUED)
        .order_by("position")
        .values("pk", "kind")
        .first()
    )
    task = _prompt_task()
    if nxt is not None and nxt["kind"] == Cell.Kind.PROMPT and task is not None:
        task.delay(nxt["pk"])


def _longest_command_s(session_id: int) -> int:
    timeout = (
        Session.objects.filter(pk=session_id)
        .values_list("project__command_timeout_s", flat=True)
        .first()
    )
    return min(timeout or 0, settings.NOTEBOOK_MAX_COMMAND_S)


SANDBOX_NOT_RUNNING = "The sandbox is not running; it starts with the next command."


def list_workspace(session: Session, path: str) -> tuple[Any, str]:
    """Entries of ``path`` under /workspace (a ``DirListing``, or [] when unavailable) and
    an error message ("" when fine).

    A session without a running sandbox lists nothing rather than starting a container.
    """
    from agentide.sandboxes import services as sandboxes
    from agentide.sandboxes.models import Sandbox

    state = Sandbox.objects.filter(session_id=session.pk).values_list("state", flat=True).first()
    if state != Sandbox.State.RUNNING:
        return [], SANDBOX_NOT_RUNNING
    try:
        entries = sandboxes.list_files(session, path)
    except Exception as exc:
        return [], f"Cannot list /workspace/{path}: {getattr(exc, 'message', exc)}"
    # The runner keeps the shell's state in /workspace/.agentide: not the user's files.
    shown = [e for e in entries if e.path.strip("/") != ".agentide"]
    return replace(entries, entries=sorted(shown, key=lambda e: (e.kind != "dir", e.name))), ""


class DownloadRefused(Exception):
    """A workspace file that is not served: ``message`` says why, ``status`` is the HTTP
    status that fits (403 over the site's limit, 409 without a container to read)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def open_workspace_file(session: Session, path: str, *, max_bytes: int) -> FileStream:
    """Stream a file under /workspace, from a running or a stopped sandbox; never starts one.

    Raises DownloadRefused for a file over ``max_bytes`` or a session without a container to
    read from, Http404 for a path that is not a readable regular file.
    """
    from agentide.sandboxes import services as sandboxes

    try:
        return sandboxes.open_file(session, path, max_bytes=max_bytes)
    except FileTooLarge as exc:
        raise DownloadRefused(
            f"/workspace/{path} is {exc.size / 2**20:.1f} MiB; downloads are limited to "
            f"{exc.limit / 2**20:g} MiB. Split or compress it with a command first.",
            status=403,
        ) from exc
    except SandboxNotFound as exc:
        raise DownloadRefused(
            "The sandbox has no container to read files from; it is made by the next command.",
            status=409,
        ) from exc
    except Exception as exc:
        raise Http404(f"Cannot read {path}: {getattr(exc, 'message', exc)}") from exc


def write_workspace_file(
    actor: Membership, session: Session, path: str, data: bytes | BinaryIO
) -> None:
    """Create or replace a file under /workspace from bytes or a seekable file (writers
    only); ValidationError on failure."""
    from agentide.sandboxes import services as sandboxes

    require(actor, write=True)
    try:
        sandboxes.write_file(session, path, data)
    except Exception as exc:
        raise ValidationError(f"Upload failed: {getattr(exc, 'message', exc)}") from exc
