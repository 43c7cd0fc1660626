"""Team workflows: creating teams, managing members and the last-owner rule."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404

from agentide.accounts import services
from agentide.accounts.models import Membership, Role, Team, User

pytestmark = pytest.mark.django_db


def test_creating_a_team_makes_the_creator_its_owner(personas):
    team = services.create_team(personas.member, "  Research Lab ")
    assert team.name == "Research Lab"
    assert team.slug == "research-lab"
    assert Membership.objects.get(team=team, user=personas.member).role == Role.OWNER


def test_team_names_are_unique_regardless_of_case(personas):
    with pytest.raises(ValidationError, match="already exists"):
        services.create_team(personas.member, "acme")
    assert Team.objects.filter(name__iexact="acme").count() == 1


def test_slugs_stay_unique_when_names_differ_only_in_punctuation(personas):
    first = services.create_team(personas.member, "Data & Co")
    second = services.create_team(personas.member, "Data Co")
    assert {first.slug, second.slug} == {"data-co", "data-co-2"}


def test_members_can_be_added_by_username_or_email(personas):
    newcomer = User.objects.create_user("newcomer", "New.Comer@example.test", "x-12345-pw")
    other = User.objects.create_user("other", "other@example.test", "x-12345-pw")
    actor = personas.membership(personas.admin)
    by_email = services.add_member(actor, "new.comer@EXAMPLE.test", Role.REVIEWER)
    by_name = services.add_member(actor, "OTHER")
    assert by_email.user == newcomer and by_email.role == Role.REVIEWER
    assert by_name.user == other and by_name.role == Role.MEMBER


def test_adding_an_unknown_or_existing_member_is_refused(personas):
    actor = personas.membership(personas.owner)
    with pytest.raises(ValidationError, match="No such user"):
        services.add_member(actor, "nobody")
    with pytest.raises(ValidationError, match="already in"):
        services.add_member(actor, "member")


def test_only_owners_and_admins_manage_members(personas):
    for user in (personas.member, personas.reviewer):
        with pytest.raises(PermissionDenied):
            services.add_member(personas.membership(user), "outsider")
    assert not personas.team.memberships.filter(user=personas.outsider).exists()


def test_admins_cannot_create_or_touch_owners(personas):
    admin = personas.membership(personas.admin)
    with pytest.raises(PermissionDenied):
        services.add_member(admin, "outsider", Role.OWNER)
    with pytest.raises(PermissionDenied):
        services.change_role(admin, personas.membership(personas.owner), Role.MEMBER)
    with pytest.raises(PermissionDenied):
        services.remove_member(admin, personas.membership(personas.owner))


def test_the_last_owner_cannot_be_demoted_removed_or_leave(personas):
    owner = personas.membership(personas.owner)
    with pytest.raises(ValidationError, match="needs an owner"):
        services.change_role(owner, owner, Role.ADMIN)
    with pytest.raises(ValidationError, match="last owner"):
        services.leave_team(owner)
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


def test_an_owner_can_step_down_once_there_is_another_owner(personas):
    owner = personas.membership(personas.owner)
    services.change_role(owner, personas.membership(personas.admin), Role.OWNER)
    services.change_role(owner, owner, Role.MEMBER)
    assert personas.membership(personas.owner).role == Role.MEMBER
    assert personas.team.memberships.filter(role=Role.OWNER).count() == 1


def test_members_can_leave(personas):
    services.leave_team(personas.membership(personas.member))
    assert not personas.team.memberships.filter(user=personas.member).exists()


def test_access_helper_hides_other_teams_and_refuses_reviewer_writes(personas):
    with pytest.raises(Http404):
        services.get_membership_for_user(personas.outsider, "acme")
    with pytest.raises(Http404):
        services.get_membership_for_user(personas.owner, "does-not-exist")
    with pytest.raises(PermissionDenied):
        services.get_membership_for_user(personas.reviewer, "acme", write=True)
    with pytest.raises(PermissionDenied):
        services.get_membership_for_user(personas.member, "acme", manage=True)
    assert services.get_membership_for_user(personas.reviewer, "acme").role == Role.REVIEWER
