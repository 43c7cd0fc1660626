"""Project workflows and the project access helper."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import Http404

from agentide.accounts.models import Membership, User
from agentide.accounts.services import get_membership_for_user, require, unique_slug
from agentide.projects.models import Project


def get_project_for_user(
    user: User, team_slug: str, project_slug: str, *, write: bool = False, manage: bool = False
) -> tuple[Project, Membership]:
    """Return the project and the user's membership of its team.

    Raises Http404 for other teams' projects exactly as for missing ones, and
    PermissionDenied when the role lacks ``write`` or ``manage`` rights.
    """
    membership = get_membership_for_user(user, team_slug)
    try:
        project = Project.objects.select_related("team").get(
            team=membership.team, slug=project_slug
        )
    except Project.DoesNotExist:
        raise Http404("No such project.") from None
    require(membership, write=write, manage=manage)
    return project, membership


@transaction.atomic
def create_project(actor: Membership, name: str, description: str = "") -> Project:
    """Create a project in the actor's team (any member who can write)."""
    require(actor, write=True)
    name = name.strip()
    team = actor.team
    if Project.objects.filter(team=team, name__iexact=name).exists():
        raise ValidationError({"name": "This team already has a project with this name."})
    slug = unique_slug(name, exists=lambda s: Project.objects.filter(team=team, slug=s).exists())
    try:
        with transaction.atomic():
            return Project.objects.create(
                team=team, name=name, slug=slug, description=description, created_by=actor.user
            )
    except IntegrityError:
        raise ValidationError({"name": "This team already has a project with this name."}) from None


@transaction.atomic
def update_project_settings(
    actor: Membership, project: Project, changes: dict[str, Any]
) -> Project:
    """Apply validated setting ``changes`` (owners and admins only)."""
    require(actor, manage=True)
    name = changes.get("name")
    if (
        name
        and Project.objects.filter(team=project.team, name__iexact=name)
        .exclude(pk=project.pk)
        .exists()
    ):
        raise ValidationError({"name": "This team already has a project with this name."})
    for field, value in changes.items():
        setattr(project, field, value)
    project.full_clean()
    project.save()
    return project
