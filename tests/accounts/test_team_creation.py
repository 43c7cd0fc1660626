"""Who may create teams: a site setting (open, or site staff only) and a per-person limit of
teams owned, each refused with a clear message and nothing created."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from agentide.accounts import services
from agentide.accounts.models import Team, User
from tests.test_settings import manage

pytestmark = pytest.mark.django_db


@pytest.fixture
def newcomer(db: None) -> User:
    return User.objects.create_user("newcomer", "newcomer@example.test", "pw-newcomer-12345")


def test_an_admins_only_site_refuses_other_users_and_says_why(
    client: Any, newcomer: User, settings: Any
) -> None:
    settings.AGENTIDE_TEAM_CREATION = "admins"
    client.force_login(newcomer)
    page = client.get(reverse("team_create")).content.decode()
    assert "created by site administrators" in page and "Create team" not in page
    assert "created by site administrators" in client.get(reverse("home")).content.decode()
    response = client.post(reverse("team_create"), {"name": "Mine"})
    assert response.status_code == 400
    assert "created by site administrators" in response.content.decode()
    assert not Team.objects.filter(name="Mine").exists()
    newcomer.is_staff = True
    newcomer.save()
    assert client.post(reverse("team_create"), {"name": "Mine"}).status_code == 302
    assert Team.objects.filter(name="Mine").exists()


def test_a_person_owns_at_most_the_site_limit_of_teams(
    client: Any, newcomer: User, settings: Any
) -> None:
    settings.AGENTIDE_TEAM_CREATION = "open"
    settings.AGENTIDE_MAX_TEAMS_PER_USER = 2
    services.create_team(newcomer, "One")
    client.force_login(newcomer)
    assert client.post(reverse("team_create"), {"name": "Two"}).status_code == 302
    response = client.post(reverse("team_create"), {"name": "Three"})
    assert response.status_code == 400
    assert "You already own 2 teams, the most this site allows" in response.content.decode()
    assert not Team.objects.filter(name="Three").exists()
    with pytest.raises(ValidationError, match="the most this site allows"):
        services.create_team(newcomer, "Four")
    settings.AGENTIDE_MAX_TEAMS_PER_USER = 0  # no limit
    assert services.create_team(newcomer, "Five").name == "Five"


def test_the_settings_refuse_an_unknown_creation_mode() -> None:
    result = manage("check", AGENTIDE_TEAM_CREATION="closed")
    assert result.returncode != 0 and "AGENTIDE_TEAM_CREATION" in result.stderr
