"""Team pages over HTTP, for every persona: outsiders 404, reviewers read-only."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agentide.accounts.models import Membership, Role, Team, User

pytestmark = pytest.mark.django_db


def client_for(client, user):
    client.force_login(user)
    return client


def test_anonymous_visitors_are_sent_to_login(client):
    response = client.get(reverse("team_detail", args=["acme"]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("who", ["owner", "admin", "member", "reviewer"])
def test_team_members_see_the_team_page(client, personas, who):
    response = client_for(client, getattr(personas, who)).get(reverse("team_detail", args=["acme"]))
    assert response.status_code == 200
    assert b"Acme" in response.content


def test_outsiders_get_404_exactly_like_a_missing_team(client, personas):
    c = client_for(client, personas.outsider)
    assert c.get(reverse("team_detail", args=["acme"])).status_code == 404
    assert c.get(reverse("team_detail", args=["missing"])).status_code == 404
    assert (
        c.post(reverse("member_add", args=["acme"]), {"identifier": "outsider"}).status_code == 404
    )


def test_home_redirects_to_the_first_team_or_shows_the_empty_state(client, personas):
    assert client_for(client, personas.owner).get("/").status_code == 302
    loner = User.objects.create_user("loner", "", "x-12345-pw")
    response = client_for(client, loner).get("/")
    assert response.status_code == 200
    assert b"not in a team yet" in response.content


def test_creating_a_team_through_the_form(client, personas):
    response = client_for(client, personas.member).post(reverse("team_create"), {"name": "Blue"})
    assert response.status_code == 302
    assert Membership.objects.get(team__name="Blue", user=personas.member).role == Role.OWNER


def test_a_duplicate_team_name_shows_an_error_and_saves_nothing(client, personas):
    response = client_for(client, personas.member).post(reverse("team_create"), {"name": "ACME"})
    assert response.status_code == 400
    assert b"already exists" in response.content
    assert Team.objects.count() == 2


def test_an_empty_team_name_is_a_field_error(client, personas):
    response = client_for(client, personas.member).post(reverse("team_create"), {"name": "  "})
    assert response.status_code == 400
    assert Team.objects.count() == 2


def test_an_admin_adds_a_member_with_htmx_and_gets_the_members_fragment(client, personas):
    User.objects.create_user("dana", "dana@example.test", "x-12345-pw")
    response = client_for(client, personas.admin).post(
        reverse("member_add", args=["acme"]),
        {"identifier": "dana@example.test", "role": "member"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    assert b'id="members"' in response.content and b"dana" in response.content
    assert b"<html" not in response.content
    assert personas.team.memberships.filter(user__username="dana").exists()


def test_adding_an_unknown_user_shows_the_error_in_the_fragment(client, personas):
    response = client_for(client, personas.owner).post(
        reverse("member_add", args=["acme"]),
        {"identifier": "ghost", "role": "member"},
        HTTP_HX_REQUEST="true",
    )
    assert b"No such user" in response.content
    assert not personas.team.memberships.filter(user__username="ghost").exists()


@pytest.mark.parametrize("who", ["member", "reviewer"])
def test_members_and_reviewers_cannot_manage_members(client, personas, who):
    c = client_for(client, getattr(personas, who))
    target = personas.membership(personas.admin)
    assert (
        c.post(reverse("member_add", args=["acme"]), {"identifier": "outsider"}).status_code == 403
    )
    assert (
        c.post(reverse("member_role", args=["acme", target.pk]), {"role": "member"}).status_code
        == 403
    )
    assert c.post(reverse("member_remove", args=["acme", target.pk])).status_code == 403
    target.refresh_from_db()
    assert target.role == Role.ADMIN


def test_demoting_the_last_owner_is_refused_with_a_message(client, personas):
    owner = personas.membership(personas.owner)
    response = client_for(client, personas.owner).post(
        reverse("member_role", args=["acme", owner.pk]), {"role": "member"}, HTTP_HX_REQUEST="true"
    )
    assert b"needs an owner" in response.content
    owner.refresh_from_db()
    assert owner.role == Role.OWNER


def test_a_membership_of_another_team_is_not_found(client, personas):
    foreign = Membership.objects.get(team=personas.other_team)
    response = client_for(client, personas.owner).post(
        reverse("member_remove", args=["acme", foreign.pk])
    )
    assert response.status_code == 404
    assert Membership.objects.filter(pk=foreign.pk).exists()


def test_a_reviewer_may_leave(client, personas):
    response = client_for(client, personas.reviewer).post(reverse("team_leave", args=["acme"]))
    assert response.status_code == 302
    assert not personas.team.memberships.filter(user=personas.reviewer).exists()


def test_posts_without_a_csrf_token_are_refused(personas):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(personas.owner)
    response = strict.post(reverse("team_create"), {"name": "Sneaky"})
    assert response.status_code == 403
    assert not Team.objects.filter(name="Sneaky").exists()


def test_pages_carry_a_strict_content_security_policy(client, personas):
    response = client_for(client, personas.owner).get(reverse("team_detail", args=["acme"]))
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"
