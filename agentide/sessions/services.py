"""Session workflows: access and CRUD, presence, the notebook as of a seq (cells run in
``execution.py``; the event log is ``agentide.events``).

Every workflow here changes its rows and appends the matching events in one transaction
(``agentide.events.log.append_event``, the only writer of ``Event`` rows).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils.crypto import constant_time_compare

from agentide.accounts.models import Membership, User
from agentide.accounts.services import require
from agentide.events import registry
from agentide.events.log import _group_send, append_event, event_message
from agentide.events.models import Event
from agentide.projects.models import Project
from agentide.quotas import services as quotas
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.backends.base import SandboxError
from agentide.sandboxes.models import Sandbox
from agentide.sessions.models import Cell, Session

log = logging.getLogger(__name__)
_SessionStore = import_module(settings.SESSION_ENGINE).SessionStore

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
    active = Session.objects.filter(project__team_id=project.team_id,
                                    status=Session.Status.ACTIVE)
    quotas.check_can_open_session(actor, project, active=active)
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
    append_event(session.pk, registry.SESSION_RENAMED, {"title": title}, actor=actor.user)
    return session


def end_session(session: Session, *, by: User | None = None) -> bool:
    """Mark an active session ended (an operator's action; its sandbox is stopped) and
    record it; False if it already was."""
    with transaction.atomic():
        if not Session.objects.filter(pk=session.pk, status=Session.Status.ACTIVE).update(
            status=Session.Status.ENDED
        ):
            return False
        append_event(session.pk, quotas.SESSION_ENDED_EVENT,
                     {"message": "An administrator ended this session."}, actor=by)
    sandboxes.stop_sandbox(session)
    return True


# --- the sandbox side of a running cell (used by sessions/execution.py) -------------------------


def _kill_command(session: Session, cell: Cell) -> bool:
    try:
        return bool(sandboxes.cancel_command(session, cell.command_id))
    except Exception:
        log.warning("cancelling %s failed", cell.command_id, exc_info=True)
        return False


def _announce_sandbox_start(session: Session) -> None:
    """Say in the log that the sandbox is starting when a command has to wait for it (the
    sandbox service records ``running`` once it is up)."""
    state = sandboxes.sandbox_state(session)
    if state != Sandbox.State.RUNNING:
        append_event(session.pk, registry.SANDBOX_STATE, {"state": "starting", "was": state})


# --- presence -----------------------------------------------------------------------------------


_redis_clients: dict[str, Any] = {}


def _redis() -> Any:
    """One client (and connection pool) per process and URL: presence calls are frequent."""
    import redis

    client = _redis_clients.get(settings.REDIS_URL)
    if client is None:
        client = _redis_clients[settings.REDIS_URL] = redis.Redis.from_url(settings.REDIS_URL)
    return client


def _presence_key(session_id: int) -> str:
    return f"{settings.REDIS_PREFIX}:presence:{int(session_id)}"


def presence_touch(session_id: int, user_id: int, connection_id: str) -> None:
    """Record that ``user_id`` is viewing through ``connection_id`` for the next TTL seconds."""
    key = _presence_key(session_id)
    client = _redis()
    client.zadd(key, {f"{user_id}:{connection_id}": time.time() + settings.NOTEBOOK_PRESENCE_TTL_S})
    client.expire(key, settings.NOTEBOOK_PRESENCE_TTL_S * 2)


def presence_leave(session_id: int, connection_id: str, user_id: int) -> None:
    _redis().zrem(_presence_key(session_id), f"{user_id}:{connection_id}")


def viewer_ids(session_ids: Iterable[int]) -> dict[int, list[int]]:
    """User ids viewing each session now (live connections with a fresh heartbeat)."""
    client = _redis()
    now = time.time()
    result: dict[int, list[int]] = {}
    pipe = client.pipeline()
    ids = list(session_ids)
    for sid in ids:
        pipe.zrangebyscore(_presence_key(sid), now, "+inf")
    for sid, members in zip(ids, pipe.execute(), strict=True):
        users: list[int] = []
        for member in members:
            uid = int(member.split(b":", 1)[0])
            if uid not in users:
                users.append(uid)
        result[sid] = users
    return result


def viewers(session_id: int) -> list[User]:
    """The users viewing ``session_id`` now, in a stable order."""
    ids = viewer_ids([session_id])[session_id]
    return list(User.objects.filter(pk__in=ids).order_by("username"))


# --- the notebook as of a seq ------------------------------------------------------------------


@dataclass
class CellView:
    """What the page shows of one cell, folded from its events."""

    id: int
    position: int
    kind: str
    source: str
    author: str
    author_initials: str
    created_at: str
    imported: bool = False
    status: str = Cell.Status.QUEUED
    outcome: str = ""
    exit_code: int | None = None
    duration_ms: int | None = None
    error: str = ""
    cancel_requested: bool = False
    output_chars: int = 0
    truncated: bool = False
    output_parts: list[str] = field(default_factory=list)
    output_sgr: str = ""

    @property
    def output(self) -> str:
        return "".join(self.output_parts)

    @property
    def is_active(self) -> bool:
        return self.status in (Cell.Status.QUEUED, Cell.Status.RUNNING)

    def apply(self, message: dict[str, Any]) -> None:
        """Fold one event message of this cell into the view."""
        payload = message["payload"]
        kind = message["type"]
        if kind == registry.CELL_OUTPUT:
            if not self.output_parts:
                self.output_sgr = payload.get("sgr", "")
            self.output_parts.append(payload.get("text", ""))
        elif kind == registry.CELL_STARTED:
            self.status = Cell.Status.RUNNING
        elif kind == registry.CELL_CANCEL_REQUESTED:
            self.cancel_requested = True
        elif kind == registry.CELL_FINISHED:
            self.status = payload["status"]
            self.outcome = payload.get("outcome", "")
            self.exit_code = payload.get("exit_code")
            self.duration_ms = payload.get("duration_ms")
            self.error = payload.get("error", "")
            self.output_chars = payload.get("output_chars", 0)
            self.truncated = payload.get("truncated", False)

    @classmethod
    def from_created(cls, message: dict[str, Any]) -> CellView:
        payload = message["payload"]
        return cls(
            id=payload["cell_id"],
            position=payload["position"],
            kind=payload["kind"],
            source=payload["source"],
            author=message["actor"] or message.get("imported_actor", ""),
            author_initials=message["actor_initials"]
            or message.get("imported_actor", "")[:2].upper(),
            created_at=message["created_at"],
            imported=bool(message.get("imported")),
            status=payload.get("status", Cell.Status.QUEUED),
            error=payload.get("error", ""),
        )


@dataclass
class NotebookView:
    """The notebook as of event ``last_seq``: the page renders this, then the websocket
    streams events after ``last_seq``."""

    last_seq: int
    title: str
    cells: list[CellView]


def notebook_view(session: Session) -> NotebookView:
    """Fold the session's events up to its current ``last_seq`` into cell views."""
    last_seq = Session.objects.filter(pk=session.pk).values_list("last_seq", flat=True).get()
    cells: dict[int, CellView] = {}
    title = session.title
    events = (
        Event.objects.filter(session=session, seq__lte=last_seq)
        .select_related("actor")
        .order_by("seq")
    )
    for event in events.iterator(chunk_size=500):
        message = event_message(event)
        if event.type == registry.CELL_CREATED:
            view = CellView.from_created(message)
            cells[view.id] = view
        elif event.type == registry.SESSION_RENAMED:
            title = event.payload.get("title", title)
        elif event.cell_id in cells:
            cells[event.cell_id].apply(message)
    return NotebookView(last_seq=last_seq, title=title, cells=list(cells.values()))


# --- the sandbox as the notebook shows it ---------------------------------------------------------

SANDBOX_LABELS = {
    "none": "No sandbox yet",
    "pooled": "Sandbox starting…",
    "creating": "Sandbox starting…",
    "starting": "Sandbox starting…",
    "running": "Sandbox running",
    "stopped": "Sandbox stopped",
    "destroyed": "Sandbox removed",
    "missing": "Sandbox missing",
    "error": "Sandbox failed",
}


def sandbox_summary(
    session: Session, *, stats: bool = False, state: str | None = None
) -> dict[str, Any]:
    """The session's sandbox state for the header: ``{"state", "label", "stats"}``.

    ``state`` overrides the database (a ``sandbox.state`` event being rendered). Stats
    (CPU %, memory) are asked of the engine only when requested and the sandbox runs;
    engine trouble shows as missing stats, never as an error page.
    """
    if state is None:
        state = sandboxes.sandbox_state(session)
    summary: dict[str, Any] = {
        "state": state,
        "label": SANDBOX_LABELS.get(state, f"Sandbox {state}"),
        "stats": None,
    }
    if stats and state == "running":
        try:
            summary["stats"] = sandboxes.sandbox_stats(session)
        except Exception:
            log.info("stats of the sandbox of session %s unavailable", session.pk, exc_info=True)
    return summary
