"""API keys in the team page and in Django admin: owners and admins create them (the secret
shown once, stored hashed) and revoke them; members see the list; nobody sees a secret
again."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from django.test import Client

from agentide.api.auth import find_key
from agentide.api.errors import ApiError
from agentide.api.models import ApiKey

HTMX = {"HX-Request": "true"}
SECRET = re.compile(r"aide-[0-9a-f]{12}-[A-Za-z0-9_-]{40,}")


def client_for(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def test_an_owner_creates_a_key_whose_secret_shows_once(personas: Any, project: Any) -> None:
    client = client_for(personas.owner)
    response = client.post("/t/acme/api-keys/", {"name": "ci runner", "project": project.pk},
                           headers=HTMX)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    secrets = SECRET.findall(response.content.decode())
    assert len(secrets) == 1
    secret = secrets[0]

    key = ApiKey.objects.get()
    assert (key.name, key.project, key.team, key.created_by) == (
        "ci runner", project, personas.team, personas.owner)
    assert key.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(list(ApiKey.objects.values()))  # only its hash is kept
    assert find_key(secret) == key

    page = client.get("/t/acme/").content.decode()
    assert "ci runner" in page and f"aide-{key.prefix}-" in page
    assert SECRET.search(page) is None


def test_without_htmx_the_secret_is_shown_on_a_page_not_a_redirect(personas: Any,
                                                                  project: Any) -> None:
    response = client_for(personas.admin).post(
        "/t/acme/api-keys/", {"name": "deploy", "project": project.pk}
    )
    assert response.status_code == 200
    assert len(SECRET.findall(response.content.decode())) == 1
    assert ApiKey.objects.get().created_by == personas.admin


def test_members_see_the_list_but_cannot_create_or_revoke(
    personas: Any, project: Any, make_key: Any
) -> None:
    key, _secret = make_key(name="listed")
    for user in (personas.member, personas.reviewer):
        client = client_for(user)
        page = client.get("/t/acme/").content.decode()
        assert "listed" in page
        assert "api-keys/" not in page  # no create or revoke forms
        assert client.post("/t/acme/api-keys/",
                           {"name": "mine", "project": project.pk}).status_code == 403
        assert client.post(f"/t/acme/api-keys/{key.pk}/revoke/").status_code == 403
    assert client_for(personas.outsider).post(
        "/t/acme/api-keys/", {"name": "x", "project": project.pk}
    ).status_code == 404
    assert ApiKey.objects.count() == 1 and not ApiKey.objects.get().is_revoked


def test_an_admin_revokes_a_key(personas: Any, make_key: Any) -> None:
    key, secret = make_key(name="old")
    response = client_for(personas.admin).post(f"/t/acme/api-keys/{key.pk}/revoke/",
                                               headers=HTMX)
    assert response.status_code == 200
    assert "Revoked the key old" in response.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None and key.revoked_by == personas.admin
    with pytest.raises(ApiError) as caught:
        find_key(secret)
    assert caught.value.status == 401


def test_another_teams_key_or_project_is_not_found(personas: Any, project: Any) -> None:
    from agentide.api.keys import create_key
    from agentide.projects.models import Project

    theirs = Project.objects.create(team=personas.other_team, name="Theirs", slug="theirs")
    their_key, _ = create_key(personas.outsider, project=theirs, name="theirs")
    client = client_for(personas.owner)
    assert client.post(f"/t/acme/api-keys/{their_key.pk}/revoke/").status_code == 404
    response = client.post("/t/acme/api-keys/", {"name": "x", "project": theirs.pk},
                           headers=HTMX)
    assert "Select a valid choice" in response.content.decode()
    assert ApiKey.objects.filter(team=personas.team).count() == 0
    their_key.refresh_from_db()
    assert their_key.revoked_at is None


def test_names_are_escaped_and_forms_need_csrf(personas: Any, project: Any,
                                               make_key: Any) -> None:
    make_key(name="<script>alert(1)</script>")
    page = client_for(personas.member).get("/t/acme/").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    strict = client_for(personas.owner, enforce_csrf_checks=True)
    refused = strict.post("/t/acme/api-keys/", {"name": "x", "project": project.pk})
    assert refused.status_code == 403
    assert ApiKey.objects.count() == 1


def test_a_blank_name_is_refused_with_a_message(personas: Any, project: Any) -> None:
    response = client_for(personas.owner).post(
        "/t/acme/api-keys/", {"name": "  ", "project": project.pk}, headers=HTMX
    )
    assert "This field is required" in response.content.decode()
    assert ApiKey.objects.count() == 0


@pytest.fixture
def superuser_client(db: None) -> Client:
    from agentide.accounts.models import User

    user = User.objects.create_superuser("root", "root@example.test", "pw-root-12345")
    return client_for(user)


def test_admin_creates_a_key_shown_once(superuser_client: Client, personas: Any,
                                        project: Any) -> None:
    response = superuser_client.post(
        "/admin/api/apikey/add/",
        {"project": project.pk, "name": "from admin", "created_by": personas.member.pk},
    )
    assert response.status_code == 200
    secrets = SECRET.findall(response.content.decode())
    assert len(secrets) == 1
    key = ApiKey.objects.get()
    assert find_key(secrets[0]) == key
    assert (key.team, key.created_by) == (personas.team, personas.member)

    change = superuser_client.get(f"/admin/api/apikey/{key.pk}/change/").content.decode()
    assert SECRET.search(change) is None and key.digest not in change

    superuser_client.post("/admin/api/apikey/", {"action": "revoke",
                                                 "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.is_revoked


def test_admin_refuses_a_key_acting_as_a_reviewer_or_outsider(
    superuser_client: Client, personas: Any, project: Any
) -> None:
    for user in (personas.reviewer, personas.outsider):
        response = superuser_client.post(
            "/admin/api/apikey/add/",
            {"project": project.pk, "name": "nope", "created_by": user.pk},
        )
        assert "may write" in response.content.decode()
    assert ApiKey.objects.count() == 0


def test_a_team_has_a_bounded_number_of_live_keys(personas: Any, project: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from agentide.api import keys

    monkeypatch.setattr(keys, "MAX_KEYS_PER_TEAM", 2)
    client = client_for(personas.owner)
    for name in ("one", "two"):
        client.post("/t/acme/api-keys/", {"name": name, "project": project.pk}, headers=HTMX)
    response = client.post("/t/acme/api-keys/", {"name": "three", "project": project.pk},
                           headers=HTMX)
    assert "2 live API keys, the most it may have" in response.content.decode()
    assert SECRET.search(response.content.decode()) is None
    keys.revoke_key(ApiKey.objects.get(name="one"), by=personas.owner)
    client.post("/t/acme/api-keys/", {"name": "three", "project": project.pk}, headers=HTMX)
    assert ApiKey.objects.filter(name="three").exists()
