"""Django admin actions need the permission they act with: view-only staff can look, not act."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from agentide.accounts.models import User
from agentide.projects.models import Project
from agentide.quotas import services as quotas
from agentide.sessions.models import Session
from agentide.sessions.services import create_session

pytestmark = pytest.mark.django_db

CHANGELISTS = {
    "/admin/accounts/team/": {"suspend", "unsuspend"},
    "/admin/notebook/session/": {"stop_sandbox", "destroy_sandbox", "end_session"},
    "/admin/sandboxes/sandbox/": {"stop", "destroy", "reconcile"},
}


def staff_client(*codenames: str) -> Client:
    user = User.objects.create_user("staff", "staff@example.test", "pw-staff-12345", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def offered_actions(client: Client, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action is offered
    return {name for name, _label in form.fields["action"].choices if name} if form else set()


@pytest.fixture
def session(personas: Any) -> Session:
    project = Project.objects.create(
        team=personas.team, name="Demo", slug="demo", created_by=personas.owner
    )
    return create_session(personas.membership(personas.member), project, "Watched")


def test_view_only_staff_are_offered_no_actions(personas):
    client = staff_client("view_team", "view_session", "view_sandbox")
    for url in CHANGELISTS:
        assert offered_actions(client, url) == set(), url


def test_change_permission_allows_stopping_but_not_destroying(personas):
    client = staff_client("view_team", "change_team", "view_session", "change_session",
                          "view_sandbox", "change_sandbox")
    assert offered_actions(client, "/admin/accounts/team/") == {"suspend", "unsuspend"}
    assert offered_actions(client, "/admin/notebook/session/") == {"stop_sandbox", "end_session"}
    assert offered_actions(client, "/admin/sandboxes/sandbox/") == {"stop", "reconcile"}


def test_superusers_keep_every_action(personas):
    root = User.objects.create_superuser("root", "root@example.test", "pw-root-12345")
    client = Client()
    client.force_login(root)
    for url, actions in CHANGELISTS.items():
        assert actions <= offered_actions(client, url), url


def test_a_forged_action_post_from_view_only_staff_is_refused(personas, session):
    client = staff_client("view_team", "view_session")
    response = client.post(
        "/admin/accounts/team/",
        {"action": "suspend", "_selected_action": [str(personas.team.pk)], "index": "0"},
    )
    assert response.status_code in (200, 302)
    assert not quotas.quota_for(personas.team).suspended
    client.post(
        "/admin/notebook/session/",
        {"action": "end_session", "_selected_action": [str(session.pk)], "index": "0"},
    )
    session.refresh_from_db()
    assert session.status == Session.Status.ACTIVE
