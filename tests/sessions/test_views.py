"""The session page and its htmx endpoints, for every persona."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agentide.events import log as event_log
from agentide.sessions import execution, notebook, presence
from agentide.sessions.models import Cell

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_sandbox(monkeypatch):
    """The page without a sandbox engine: no stats, an empty workspace listing."""
    monkeypatch.setattr(
        notebook,
        "sandbox_summary",
        lambda session, stats=False: {"state": "none", "label": "No sandbox yet", "stats": None},
    )


def as_user(client, user):
    client.force_login(user)
    return client


@pytest.mark.parametrize("who", ["owner", "admin", "member", "reviewer"])
def test_team_members_see_the_session(client, personas, session, no_sandbox, no_tasks, who):
    execution.submit_cell(
        personas.membership(personas.member), session, "shell", "echo '<script>alert(1)</script>'"
    )
    execution.submit_cell(personas.membership(personas.member), session, "prompt", "Fix <b>it</b>")
    response = as_user(client, getattr(personas, who)).get(
        reverse("session_detail", args=[session.pk])
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<script>alert(1)</script>" not in body
    assert 'data-last-seq="2"' in body
    assert "Fix &lt;b&gt;it&lt;/b&gt;" in body
    assert ('id="composer"' in body) == (who != "reviewer")


def test_outsiders_get_404_everywhere(client, personas, session, no_sandbox, no_tasks):
    cell = execution.submit_cell(personas.membership(personas.member), session, "shell", "ls")
    c = as_user(client, personas.outsider)
    for name, args in [
        ("session_detail", [session.pk]),
        ("cell_output", [session.pk, cell.pk]),
        ("sandbox_panel", [session.pk]),
        ("session_files", [session.pk]),
    ]:
        assert c.get(reverse(name, args=args)).status_code == 404, name
    for name, args in [
        ("cell_create", [session.pk]),
        ("cell_cancel", [session.pk, cell.pk]),
        ("session_rename", [session.pk]),
        ("file_upload", [session.pk]),
    ]:
        assert c.post(reverse(name, args=args), {"source": "ls"}).status_code == 404, name


def test_anonymous_users_are_sent_to_log_in(client, session):
    response = client.get(reverse("session_detail", args=[session.pk]))
    assert response.status_code == 302


def test_reviewers_cannot_write(client, personas, session, no_sandbox, no_tasks):
    cell = execution.submit_cell(personas.membership(personas.member), session, "shell", "ls")
    c = as_user(client, personas.reviewer)
    assert (
        c.post(
            reverse("cell_create", args=[session.pk]), {"kind": "shell", "source": "ls"}
        ).status_code
        == 403
    )
    assert c.post(reverse("cell_cancel", args=[session.pk, cell.pk])).status_code == 403
    assert c.post(reverse("session_rename", args=[session.pk]), {"title": "x"}).status_code == 403
    assert c.post(reverse("file_upload", args=[session.pk])).status_code == 403
    assert Cell.objects.count() == 1


def test_members_submit_cells_and_get_errors_for_bad_input(client, personas, session, no_tasks):
    c = as_user(client, personas.member)
    url = reverse("cell_create", args=[session.pk])
    ok = c.post(url, {"kind": "shell", "source": "echo hi"}, HTTP_HX_REQUEST="true")
    assert ok.status_code == 200 and ok["HX-Trigger"] == "cell-submitted"
    empty = c.post(url, {"kind": "shell", "source": "  "}, HTTP_HX_REQUEST="true")
    assert empty.status_code == 422 and b"Enter a command first." in empty.content
    big = c.post(url, {"kind": "shell", "source": "x" * 70000}, HTTP_HX_REQUEST="true")
    assert big.status_code == 422 and b"64 KiB" in big.content
    assert list(Cell.objects.values_list("source", flat=True)) == ["echo hi"]


def test_posts_need_the_csrf_token(personas, session, no_tasks):
    from django.test import Client

    c = Client(enforce_csrf_checks=True)
    c.force_login(personas.member)
    url = reverse("cell_create", args=[session.pk])
    assert c.post(url, {"kind": "shell", "source": "ls"}).status_code == 403
    assert not Cell.objects.exists()


def test_cancel_and_rename(client, personas, session, no_tasks):
    cell = execution.submit_cell(personas.membership(personas.member), session, "shell", "sleep 9")
    c = as_user(client, personas.owner)
    assert c.post(reverse("cell_cancel", args=[session.pk, cell.pk])).status_code == 204
    cell.refresh_from_db()
    assert cell.status == Cell.Status.CANCELLED
    response = c.post(reverse("session_rename", args=[session.pk]), {"title": "Renamed"})
    assert response.status_code == 200
    session.refresh_from_db()
    assert session.title == "Renamed"


def test_stored_output_is_served_as_plain_text(client, personas, session, no_tasks):
    execution.submit_cell(personas.membership(personas.member), session, "shell", "x")
    cell = execution.claim_next_cell(session.pk)
    event_log.append_event(
        session.pk, "cell.output", {"text": "\x1b[31m<b>red</b>\x1b[0m\n"}, cell=cell
    )
    response = as_user(client, personas.reviewer).get(
        reverse("cell_output", args=[session.pk, cell.pk])
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response.content == b"<b>red</b>\n"


def test_the_project_page_lists_sessions_with_viewers_and_sandbox(
    client, personas, session, project
):
    from agentide.sandboxes.models import Sandbox

    Sandbox.objects.create(session=session, state=Sandbox.State.STOPPED, image="x")
    presence.presence_touch(session.pk, personas.owner.pk, "conn-1")
    try:
        response = as_user(client, personas.reviewer).get(
            reverse("project_detail", args=[personas.team.slug, project.slug])
        )
    finally:
        presence.presence_leave(session.pk, "conn-1", personas.owner.pk)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Debugging" in body and "1 viewing" in body and "Stopped" in body
