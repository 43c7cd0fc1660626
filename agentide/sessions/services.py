"""Session workflows and the session access helper."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404

from agentide.accounts.models import Membership, User
from agentide.accounts.services import require
from agentide.projects.models import Project
from agentide.sessions.models import Session


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


def sessions_for_project(project: Project) -> QuerySet[Session]:
    """The project's sessions, most recently active first."""
    return Session.objects.filter(project=project).select_related("created_by")


@transaction.atomic
def create_session(actor: Membership, project: Project, title: str = "") -> Session:
    """Open a new session in ``project``. Its sandbox is created on first need."""
    require(actor, write=True)
    if project.team_id != actor.team_id:
        raise Http404("No such project.")
    title = title.strip() or f"Session {Session.objects.filter(project=project).count() + 1}"
    if len(title) > 120:
        raise ValidationError({"title": "Keep the title under 120 characters."})
    return Session.objects.create(project=project, title=title, created_by=actor.user)
