"""Team workflows and the team access helper.

Every function that changes a team takes the acting member's Membership and checks the
rule itself, so views stay thin and the rules hold wherever they are called from.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import Http404
from django.utils.text import slugify

from agentide.accounts.models import Membership, Role, Team, User


def get_membership_for_user(
    user: User, team_slug: str, *, write: bool = False, manage: bool = False
) -> Membership:
    """Return ``user``'s membership of the team with ``team_slug``.

    Raises Http404 when the team does not exist or the user is not in it (the two cases
    look the same to an outsider), and PermissionDenied when the member's role is not
    allowed to write (``write``) or to manage the team (``manage``).
    """
    if not user.is_authenticated:
        raise Http404("No such team.")
    try:
        membership = Membership.objects.select_related("team", "user").get(
            team__slug=team_slug, user=user
        )
    except Membership.DoesNotExist:
        raise Http404("No such team.") from None
    require(membership, write=write, manage=manage)
    return membership


def require(membership: Membership, *, write: bool = False, manage: bool = False) -> None:
    """Raise PermissionDenied when ``membership`` lacks the asked-for rights."""
    if manage and not membership.can_manage:
        raise PermissionDenied("Only the team's owners and admins can do this.")
    if write and not membership.can_write:
        raise PermissionDenied("Reviewers have read-only access.")


def unique_slug(name: str, *, exists: Callable[[str], bool]) -> str:
    """Return a slug for ``name`` that ``exists(slug)`` reports as free (suffixing -2, -3...)."""
    base = slugify(name)[:70] or "item"
    slug, n = base, 1
    while exists(slug):
        n += 1
        slug = f"{base}-{n}"
    return slug


def team_creation_refusal(user: User) -> str:
    """Why ``user`` may not create a team now, or "" when they may
    (``AGENTIDE_TEAM_CREATION``, ``AGENTIDE_MAX_TEAMS_PER_USER``; site staff always may)."""
    if user.is_staff:
        return ""
    if settings.AGENTIDE_TEAM_CREATION == "admins":
        return "On this site, teams are created by site administrators: ask one for a team."
    limit = settings.AGENTIDE_MAX_TEAMS_PER_USER
    owned = Membership.objects.filter(user=user, role=Role.OWNER).count()
    if limit and owned >= limit:
        return (
            f"You already own {owned} team{'s' if owned != 1 else ''}, the most this site "
            "allows per person: use one of them, or ask a site administrator."
        )
    return ""


@transaction.atomic
def create_team(user: User, name: str) -> Team:
    """Create a team owned by ``user``. Raises ValidationError if the name is taken or the
    site does not let ``user`` create (another) team."""
    User.objects.select_for_update().filter(pk=user.pk).first()  # one creation at a time
    refusal = team_creation_refusal(user)
    if refusal:
        raise ValidationError(refusal)
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the team a name."})
    if Team.objects.filter(name__iexact=name).exists():
        raise ValidationError({"name": "A team with this name already exists."})
    slug = unique_slug(name, exists=lambda s: Team.objects.filter(slug=s).exists())
    try:
        with transaction.atomic():
            team = Team.objects.create(name=name, slug=slug)
    except IntegrityError:
        raise ValidationError({"name": "A team with this name already exists."}) from None
    Membership.objects.create(team=team, user=user, role=Role.OWNER)
    return team


NO_SUCH_USER = "No such user."


def find_user(identifier: str) -> User:
    """Return the active user whose username or email is exactly ``identifier`` (ignoring case).

    Raises ValidationError with one message for every miss (unknown, inactive, ambiguous), so
    the member form cannot be used to learn which accounts exist or to guess partial names.
    """
    identifier = identifier.strip()
    if not identifier:
        raise ValidationError({"identifier": "Enter a username or an email address."})
    users = list(
        User.objects.filter(is_active=True).filter(
            Q(username__iexact=identifier) | (Q(email__iexact=identifier) & ~Q(email=""))
        )[:2]
    )
    if len(users) != 1:
        raise ValidationError({"identifier": NO_SUCH_USER})
    return users[0]


def _check_grant(actor: Membership, role: str) -> None:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    require(actor, manage=True)
    if role == Role.OWNER and not actor.is_owner:
        raise PermissionDenied("Only owners can make someone an owner.")


@transaction.atomic
def add_member(actor: Membership, identifier: str, role: str = Role.MEMBER) -> Membership:
    """Add the user named by username or email to the actor's team with ``role``."""
    _check_grant(actor, role)
    user = find_user(identifier)
    if Membership.objects.filter(team=actor.team, user=user).exists():
        raise ValidationError({"identifier": f"{user.username} is already in {actor.team}."})
    return Membership.objects.create(team=actor.team, user=user, role=role)


def _lock_owners(team: Team) -> int:
    """Lock the team row (serialising owner changes) and return how many owners it has."""
    Team.objects.select_for_update().filter(pk=team.pk).first()
    return Membership.objects.filter(team=team, role=Role.OWNER).count()


@transaction.atomic
def change_role(actor: Membership, membership: Membership, role: str) -> Membership:
    """Give ``membership`` a new role. The last owner cannot be demoted."""
    _check_grant(actor, role)
    if membership.team_id != actor.team_id:
        raise Http404("No such member.")
    if membership.is_owner and not actor.is_owner:
        raise PermissionDenied("Only owners can change an owner's role.")
    if membership.is_owner and role != Role.OWNER and _lock_owners(actor.team) <= 1:
        raise ValidationError({"role": "A team needs an owner: make someone else owner first."})
    membership.role = role
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def remove_member(actor: Membership, membership: Membership) -> None:
    """Remove ``membership`` from the team (owners/admins; leaving uses leave_team)."""
    if membership.pk == actor.pk:
        leave_team(actor)
        return
    require(actor, manage=True)
    if membership.team_id != actor.team_id:
        raise Http404("No such member.")
    if membership.is_owner and not actor.is_owner:
        raise PermissionDenied("Only owners can remove an owner.")
    if membership.is_owner and _lock_owners(actor.team) <= 1:
        raise ValidationError("A team needs an owner: the last owner cannot be removed.")
    membership.delete()


@transaction.atomic
def leave_team(membership: Membership) -> None:
    """Take the member out of their team. The last owner cannot leave."""
    if membership.is_owner and _lock_owners(membership.team) <= 1:
        raise ValidationError(
            "You are the last owner: make someone else owner before leaving the team."
        )
    membership.delete()
