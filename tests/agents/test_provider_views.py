"""Model provider settings over HTTP, per persona; keys are write-only and sealed at rest."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from fake_openai import API_KEY, MODEL, FakeOpenAI, Step

from agentide.agents.models import ModelProvider
from agentide.projects.models import Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(personas: Any) -> Project:
    return Project.objects.create(team=personas.team, name="Lab", slug="lab")


def url(name: str = "provider_settings", team: str = "acme") -> str:
    return reverse(name, args=[team, "lab"])


def form_data(**overrides: Any) -> dict[str, Any]:
    data = {
        "kind": "responses",
        "base_url": "",
        "model": MODEL,
        "api_key_env": "",
        "stores_responses": "on",
        "context_window": "128000",
        "context_budget_percent": "80",
        "price_input": "1.25",
        "price_cached_input": "0.125",
        "price_output": "10",
        "max_steps": "20",
        "instructions": "Be careful.",
        "api_key": "",
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize("who", ["owner", "admin"])
def test_owners_and_admins_save_settings_and_the_key_is_sealed_and_never_shown(
    client: Any, personas: Any, project: Project, who: str
) -> None:
    client.force_login(getattr(personas, who))
    assert client.get(url()).status_code == 200
    response = client.post(url(), form_data(api_key="sk-secret-123"))
    assert response.status_code == 302
    provider = ModelProvider.objects.get(project=project)
    assert provider.model == MODEL and provider.max_steps == 20
    assert "sk-secret-123" not in provider.api_key_sealed
    assert provider.stored_api_key() == "sk-secret-123"
    page = client.get(url()).content.decode()
    assert "sk-secret-123" not in page and provider.api_key_sealed not in page
    assert "a key is stored" in page
    # A blank key keeps the stored one; "forget" drops it.
    client.post(url(), form_data(model="other"))
    provider.refresh_from_db()
    assert provider.stored_api_key() == "sk-secret-123" and provider.model == "other"
    client.post(url(), form_data(forget_api_key="on"))
    provider.refresh_from_db()
    assert not provider.has_stored_key


def test_the_project_page_links_the_model_settings_for_managers_only(
    client: Any, personas: Any, project: Project
) -> None:
    page = reverse("project_detail", args=["acme", "lab"])
    client.force_login(personas.admin)
    assert url().encode() in client.get(page).content
    client.force_login(personas.member)
    assert url().encode() not in client.get(page).content


@pytest.mark.parametrize("who", ["member", "reviewer"])
def test_members_and_reviewers_cannot_see_or_change_settings(
    client: Any, personas: Any, project: Project, who: str
) -> None:
    client.force_login(getattr(personas, who))
    assert client.get(url()).status_code == 403
    assert client.post(url(), form_data(api_key="sk-x")).status_code == 403
    assert client.post(url("provider_check")).status_code == 403
    assert not ModelProvider.objects.exists()


def test_outsiders_get_404_like_a_missing_project(
    client: Any, personas: Any, project: Project
) -> None:
    client.force_login(personas.outsider)
    assert client.get(url()).status_code == 404
    assert client.post(url(), form_data()).status_code == 404
    assert client.post(url("provider_check")).status_code == 404
    assert client.get(reverse("provider_settings", args=["acme", "missing"])).status_code == 404


def test_only_allowed_environment_variables_can_hold_the_key(
    client: Any, personas: Any, project: Project, settings: Any
) -> None:
    settings.AGENTIDE_MODEL_KEY_VARS = ["OPENAI_API_KEY"]
    client.force_login(personas.owner)
    response = client.post(url(), form_data(api_key_env="DJANGO_SECRET_KEY"))
    assert response.status_code == 400
    assert b"does not allow" in response.content
    assert client.post(url(), form_data(api_key_env="OPENAI_API_KEY")).status_code == 302


def test_test_connection_reports_success_and_readable_failures(
    client: Any, personas: Any, project: Project
) -> None:
    client.force_login(personas.owner)
    with FakeOpenAI([Step(text="OK")]) as fake:
        client.post(url(), form_data(base_url=fake.url, api_key=API_KEY))
        response = client.post(url("provider_check"), headers={"HX-Request": "true"})
        assert response.status_code == 200
        assert b"Connection works" in response.content and b"OK" in response.content
        client.post(url(), form_data(base_url=fake.url, api_key="sk-wrong"))
        response = client.post(url("provider_check"), headers={"HX-Request": "true"})
        assert b"Connection failed" in response.content and b"401" in response.content
        assert b"sk-wrong" not in response.content


def test_the_site_can_restrict_the_hosts_a_base_url_may_name(
    client: Any, personas: Any, project: Project, settings: Any
) -> None:
    settings.AGENTIDE_MODEL_ALLOWED_HOSTS = ["api.openai.com", "127.0.0.1"]
    client.force_login(personas.owner)
    response = client.post(url(), form_data(base_url="http://redis:6379/"))
    assert response.status_code == 400 and b"does not allow" in response.content
    assert client.post(url(), form_data(base_url="http://127.0.0.1:8000/v1")).status_code == 302


def test_a_compose_service_name_is_a_valid_base_url_and_other_schemes_are_not(
    client: Any, personas: Any, project: Project
) -> None:
    client.force_login(personas.owner)
    assert client.post(url(), form_data(base_url="http://vllm:8000/v1")).status_code == 302
    response = client.post(url(), form_data(base_url="file:///etc/passwd"))
    assert response.status_code == 400 and b"http:// or https://" in response.content
