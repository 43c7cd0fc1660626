"""Project pages for every persona: outsiders 404, reviewers read-only, managers configure."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.urls import reverse

from agentide.projects.models import Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(personas):
    return Project.objects.create(team=personas.team, name="Compiler", slug="compiler")


def as_user(client, user):
    client.force_login(user)
    return client


@pytest.mark.parametrize("who", ["owner", "admin", "member", "reviewer"])
def test_team_members_can_open_the_project(client, personas, project, who):
    response = as_user(client, getattr(personas, who)).get(
        reverse("project_detail", args=["acme", "compiler"])
    )
    assert response.status_code == 200
    assert b"Compiler" in response.content


def test_outsiders_get_404_for_the_project_and_its_settings(client, personas, project):
    c = as_user(client, personas.outsider)
    for name in ("project_detail", "project_settings"):
        assert c.get(reverse(name, args=["acme", "compiler"])).status_code == 404
    assert c.post(reverse("project_create", args=["acme"]), {"name": "X"}).status_code == 404
    # Their own team's slug with our project's slug is just as unknown.
    assert c.get(reverse("project_detail", args=["other", "compiler"])).status_code == 404


@pytest.mark.parametrize("who", ["owner", "admin", "member"])
def test_writers_create_projects(client, personas, who):
    response = as_user(client, getattr(personas, who)).post(
        reverse("project_create", args=["acme"]), {"name": f"P {who}", "description": "d"}
    )
    assert response.status_code == 302
    assert Project.objects.filter(team=personas.team, name=f"P {who}").exists()


def test_reviewers_cannot_create_projects(client, personas):
    c = as_user(client, personas.reviewer)
    assert c.get(reverse("project_create", args=["acme"])).status_code == 403
    assert c.post(reverse("project_create", args=["acme"]), {"name": "Nope"}).status_code == 403
    assert not Project.objects.filter(name="Nope").exists()


def test_a_duplicate_project_name_in_the_team_is_refused(client, personas, project):
    response = as_user(client, personas.member).post(
        reverse("project_create", args=["acme"]), {"name": "COMPILER"}
    )
    assert response.status_code == 400
    assert b"already has a project with this name" in response.content
    assert Project.objects.filter(team=personas.team).count() == 1


def test_the_same_project_name_is_fine_in_another_team(client, personas, project):
    response = as_user(client, personas.outsider).post(
        reverse("project_create", args=["other"]), {"name": "Compiler"}
    )
    assert response.status_code == 302
    assert Project.objects.filter(name="Compiler").count() == 2


@pytest.mark.parametrize("who", ["member", "reviewer"])
def test_only_owners_and_admins_change_settings(client, personas, project, who):
    c = as_user(client, getattr(personas, who))
    url = reverse("project_settings", args=["acme", "compiler"])
    assert c.get(url).status_code == 403
    assert c.post(url, {"name": "Hacked"}).status_code == 403
    project.refresh_from_db()
    assert project.name == "Compiler"


def settings_form(**overrides):
    data = {
        "name": "Compiler",
        "description": "",
        "sandbox_image": "",
        "sandbox_memory_mb": "2048",
        "sandbox_cpus": "1.5",
        "sandbox_pids_limit": "512",
        "sandbox_tmp_mb": "128",
        "sandbox_disk_mb": "4096",
        "command_timeout_s": "300",
        "checkpoints_enabled": "on",
        "checkpoint_ignored_paths": ".venv/",
        "checkpoint_keep_last": "200",
        "checkpoint_keep_days": "30",
    }
    data.update(overrides)
    return data


def test_an_admin_saves_sandbox_settings(client, personas, project):
    url = reverse("project_settings", args=["acme", "compiler"])
    response = as_user(client, personas.admin).post(url, settings_form())
    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.sandbox_memory_mb, str(project.sandbox_cpus)) == (2048, "1.50")
    assert project.sandbox_disk_mb == 4096


@pytest.mark.parametrize(
    "field,value",
    [("sandbox_memory_mb", "-5"), ("sandbox_cpus", "999"), ("command_timeout_s", "x"),
     ("sandbox_disk_mb", "8")],
)
def test_bad_settings_are_field_errors_and_nothing_is_saved(
    client, personas, project, field, value
):
    url = reverse("project_settings", args=["acme", "compiler"])
    response = as_user(client, personas.owner).post(url, settings_form(**{field: value}))
    assert response.status_code == 400
    project.refresh_from_db()
    assert project.sandbox_memory_mb == 1024 and project.command_timeout_s == 600


def test_a_project_cannot_pick_an_image_the_site_does_not_list(client, personas, project):
    url = reverse("project_settings", args=["acme", "compiler"])
    c = as_user(client, personas.owner)
    response = c.post(url, settings_form(sandbox_image="attacker/rootkit:latest"))
    assert response.status_code == 400
    assert b"This site does not allow that image" in response.content
    project.refresh_from_db()
    assert project.sandbox_image == ""
    response = c.post(url, settings_form(sandbox_image=settings.AGENTIDE_SANDBOX_IMAGE))
    assert response.status_code == 302
    project.refresh_from_db()
    assert project.sandbox_image == settings.AGENTIDE_SANDBOX_IMAGE
