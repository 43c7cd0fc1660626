"""The checkpoint settings of a project: listed for every member on the project page,
edited by managers on the settings page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agentide.projects.models import Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(personas):
    return Project.objects.create(team=personas.team, name="Compiler", slug="compiler")


def settings_form(project, **changes):
    data = {
        "name": project.name, "description": "", "sandbox_image": "",
        "sandbox_memory_mb": project.sandbox_memory_mb, "sandbox_cpus": project.sandbox_cpus,
        "sandbox_pids_limit": project.sandbox_pids_limit,
        "sandbox_tmp_mb": project.sandbox_tmp_mb, "sandbox_disk_mb": project.sandbox_disk_mb,
        "command_timeout_s": project.command_timeout_s, "checkpoints_enabled": "on",
        "checkpoint_ignored_paths": project.checkpoint_ignored_paths,
        "checkpoint_keep_last": project.checkpoint_keep_last,
        "checkpoint_keep_days": project.checkpoint_keep_days,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_every_member_sees_what_is_not_checkpointed(client, personas, project):
    client.force_login(personas.reviewer)
    html = client.get(reverse("project_detail", args=["acme", "compiler"])).content.decode()
    for path in (".venv/", "node_modules/", "__pycache__/", ".cache/"):
        assert f"<code>{path}</code>" in html
    assert "the last 200 of each session are kept" in html


def test_managers_edit_the_checkpoint_settings(client, personas, project):
    client.force_login(personas.admin)
    url = reverse("project_settings", args=["acme", "compiler"])
    html = client.get(url).content.decode()
    assert 'id="checkpoint-settings"' in html and "Paths not checkpointed" in html
    response = client.post(url, settings_form(
        project, checkpoint_ignored_paths="build/\n<b>dist</b>/\n", checkpoint_keep_last=5,
        checkpoint_keep_days=2))
    assert response.status_code == 302
    project.refresh_from_db()
    assert project.checkpoint_ignored_paths.split() == ["build/", "<b>dist</b>/"]
    assert (project.checkpoint_keep_last, project.checkpoint_keep_days) == (5, 2)
    html = client.get(reverse("project_detail", args=["acme", "compiler"])).content.decode()
    assert "<code>&lt;b&gt;dist&lt;/b&gt;/</code>" in html and "the last 5 of" in html

    response = client.post(url, settings_form(project, checkpoints_enabled=None))
    assert response.status_code == 302
    html = client.get(reverse("project_detail", args=["acme", "compiler"])).content.decode()
    assert "Checkpoints are off for this project" in html


def test_a_bad_pattern_is_refused_and_nothing_saved(client, personas, project):
    client.force_login(personas.owner)
    url = reverse("project_settings", args=["acme", "compiler"])
    response = client.post(url, settings_form(project, checkpoint_ignored_paths="ok/\n../up\n"))
    assert response.status_code == 400
    assert "not a path pattern" in response.content.decode()
    project.refresh_from_db()
    assert ".venv/" in project.checkpoint_ignored_paths


def test_reviewers_and_members_cannot_open_the_settings(client, personas, project):
    for who in (personas.member, personas.reviewer):
        client.force_login(who)
        assert client.get(reverse("project_settings", args=["acme", "compiler"])).status_code == 403
