"""API key workflows: create (the secret shown once), list, revoke.

Owners and admins create and revoke a team's keys; every member sees the list (never a
secret, which is not stored).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from agentide.accounts.models import Membership, User
from agentide.accounts.services import require
from agentide.api.auth import new_secret
from agentide.api.models import ApiKey
from agentide.projects.models import Project

MAX_KEYS_PER_TEAM = 100


def team_keys(membership: Membership) -> QuerySet[ApiKey]:
    """The keys of ``membership``'s team, newest first (any member may list them)."""
    return (
        ApiKey.objects.filter(team=membership.team_id)
        .select_related("project", "created_by", "revoked_by")
        .order_by("revoked_at", "-created_at")
    )


def get_key_for_member(membership: Membership, key_id: int, *, manage: bool = False) -> ApiKey:
    """The key ``key_id`` of ``membership``'s team; Http404 for any other key, PermissionDenied
    when ``manage`` is asked of a member who is not an owner or admin."""
    require(membership, manage=manage)
    key = team_keys(membership).filter(pk=key_id).first()
    if key is None:
        raise Http404("No such API key.")
    return key


@transaction.atomic
def create_key(
    created_by: User, *, project: Project, name: str
) -> tuple[ApiKey, str]:
    """Create a key for ``project`` acting as ``created_by``; return it with its secret (the
    only time the secret exists outside the caller's hands). Raises ValidationError for a
    blank or long name or a team with ``MAX_KEYS_PER_TEAM`` live keys."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the key a name (what uses it)."})
    if len(name) > 80:
        raise ValidationError({"name": "A key's name has at most 80 characters."})
    live = ApiKey.objects.filter(team=project.team_id, revoked_at__isnull=True).count()
    if live >= MAX_KEYS_PER_TEAM:
        raise ValidationError(
            f"This team has {live} live API keys, the most it may have: revoke unused ones first."
        )
    secret, prefix, digest = new_secret()
    key = ApiKey.objects.create(
        team_id=project.team_id, project=project, name=name, prefix=prefix, digest=digest,
        created_by=created_by,
    )
    return key, secret


def create_key_for_member(
    membership: Membership, *, project: Project, name: str
) -> tuple[ApiKey, str]:
    """``create_key`` by a team owner or admin (PermissionDenied for anyone else; Http404 for
    a project of another team)."""
    require(membership, manage=True)
    if project.team_id != membership.team_id:
        raise Http404("No such project.")
    return create_key(membership.user, project=project, name=name)


def revoke_key(key: ApiKey, *, by: User | None) -> ApiKey:
    """Revoke ``key`` (its next request answers 401); revoking twice changes nothing."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_by=by
    )
    key.refresh_from_db()
    return key


def revoke_key_for_member(membership: Membership, key_id: int) -> ApiKey:
    """Revoke the team's key ``key_id`` as ``membership`` (owners and admins only)."""
    key = get_key_for_member(membership, key_id, manage=True)
    return revoke_key(key, by=membership.user)
