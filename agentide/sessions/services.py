"""Session workflows: access and CRUD, presence, the notebook as of a seq (cells run in
``execution.py``; the event log is ``agentide.events``).

Every workflow here changes its rows and appends the matching events in one transaction
(``agentide.events.log.append_event``, the only writer of ``Event`` rows).
"""

from __future__ import annotations

import logging
from importlib import import_module

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
from agentide.events.log import append_event, group_send
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
            group_send(user_group(user_id), {"type": "access.changed"})
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


def kill_command(session: Session, cell: Cell) -> bool:
    """Ask the sandbox to kill ``cell``'s command; False when it could not be asked."""
    try:
        return bool(sandboxes.cancel_command(session, cell.command_id))
    except Exception:
        log.warning("cancelling %s failed", cell.command_id, exc_info=True)
        return False


def announce_sandbox_start(session: Session) -> None:
    """Say in the log that the sandbox is starting when a command has to wait for it (the
    sandbox service records ``running`` once it is up)."""
    state = sandboxes.sandbox_state(session)
    if state != Sandbox.State.RUNNING:
        append_event(session.pk, registry.SANDBOX_STATE, {"state": "starting", "was": state})


