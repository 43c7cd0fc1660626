"""Deleting a session removes its history and its sandbox (container and workspace volume)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agentide.events.models import Event
from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import services as sandboxes
from agentide.sessions.models import Session

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def project(personas):
    from agentide.projects.models import Project

    return Project.objects.create(team=personas.team, name="P", slug="p")


def open_session(project, user) -> Session:
    return Session.objects.create(project=project, title=f"by {user.username}", created_by=user)


def engine_state() -> tuple[set[str], set[str]]:
    """Container ids and volume names the engine holds for this test run's site."""
    backend = sandboxes.get_backend()
    ids = {listing.container_id for listing in backend.list_sandboxes()}
    return ids, set(backend.list_volumes())


def test_the_creator_deletes_a_session_and_its_container_and_volume_go(client, personas, project):
    session = open_session(project, personas.member)
    sandbox = sandboxes.ensure_sandbox(session, admission=sandbox_admission(session))
    containers, volumes = engine_state()
    assert sandbox.volume in volumes and sandbox.container_id in containers

    client.force_login(personas.member)
    response = client.post(reverse("session_delete", args=[session.pk]))

    assert response.status_code == 302
    assert response["Location"] == reverse("project_detail", args=["acme", "p"])
    assert not Session.objects.filter(pk=session.pk).exists()
    assert not Event.objects.filter(session_id=session.pk).exists()
    containers_after, volumes_after = engine_state()
    assert sandbox.volume not in volumes_after
    assert sandbox.container_id not in containers_after


@pytest.mark.parametrize("who,status", [("member", 403), ("reviewer", 403), ("outsider", 404)])
def test_others_cannot_delete_a_session(client, personas, project, who, status):
    session = open_session(project, personas.admin)
    client.force_login(getattr(personas, who))
    assert client.post(reverse("session_delete", args=[session.pk])).status_code == status
    assert Session.objects.filter(pk=session.pk).exists()


def test_owners_and_admins_delete_any_session_of_their_team(client, personas, project):
    first, second = open_session(project, personas.member), open_session(project, personas.member)
    for user, session in ((personas.owner, first), (personas.admin, second)):
        client.force_login(user)
        assert client.post(reverse("session_delete", args=[session.pk])).status_code == 302
    assert not Session.objects.filter(pk__in=[first.pk, second.pk]).exists()


def test_only_those_who_may_delete_see_the_button(client, personas, project):
    session = open_session(project, personas.member)
    url = reverse("session_detail", args=[session.pk])
    cases = ((personas.member, True), (personas.admin, True), (personas.reviewer, False))
    for user, shown in cases:
        client.force_login(user)
        page = client.get(url).content.decode()
        assert (reverse("session_delete", args=[session.pk]) in page) is shown, user.username


def test_deleting_in_django_admin_also_removes_the_sandbox(client, personas, project):
    from agentide.accounts.models import User

    client.force_login(User.objects.create_superuser("root", "", "root-pass-12345"))
    session = open_session(project, personas.member)
    sandbox = sandboxes.ensure_sandbox(session, admission=sandbox_admission(session))
    response = client.post(
        reverse("admin:notebook_session_delete", args=[session.pk]), {"post": "yes"}
    )
    assert response.status_code == 302
    assert not Session.objects.filter(pk=session.pk).exists()
    assert sandbox.volume not in engine_state()[1]
