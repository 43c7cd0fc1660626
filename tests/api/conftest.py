"""Fixtures of the API tests: a project of the personas' team, keys, and openai SDK clients
pointed at a real Daphne."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest


@pytest.fixture
def project(personas: Any) -> Any:
    from agentide.projects.models import Project

    return Project.objects.create(
        team=personas.team, name="Demo", slug="demo", created_by=personas.owner
    )


@pytest.fixture
def make_key(personas: Any, project: Any) -> Callable[..., tuple[Any, str]]:
    """``make_key(user=owner, project=project, name="ci")`` -> ``(ApiKey, secret)``."""
    from agentide.api.keys import create_key

    def make(user: Any = None, project_: Any = None, name: str = "ci") -> tuple[Any, str]:
        return create_key(user or personas.owner, project=project_ or project, name=name)

    return make


@pytest.fixture
def api_key(make_key: Callable[..., tuple[Any, str]]) -> str:
    """The secret of a key of the personas' project, created by its owner."""
    return make_key()[1]


@pytest.fixture
def sdk(daphne_server: Any) -> Callable[[str], openai.OpenAI]:
    """``sdk(secret)``: the real openai SDK against Daphne's ``/v1`` (no retries, so a test
    sees each answer as it is)."""

    def client(secret: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{daphne_server.url}/v1", api_key=secret, max_retries=0)

    return client


@pytest.fixture
def set_quota(personas: Any) -> Callable[..., Any]:
    """``set_quota(**limits)`` updates the personas' team quota and returns it."""
    from agentide.quotas.services import quota_for

    def update(**limits: Any) -> Any:
        quota = quota_for(personas.team)
        for name, value in limits.items():
            setattr(quota, name, value)
        quota.full_clean()
        quota.save()
        return quota

    return update


@pytest.fixture
def caller(api_key: str) -> Any:
    """The ``ApiCaller`` of ``api_key``, for calling the services directly."""
    from agentide.accounts.models import Membership
    from agentide.api.auth import ApiCaller, find_key

    key = find_key(api_key)
    membership = Membership.objects.get(team=key.team, user=key.created_by)
    return ApiCaller(key=key, membership=membership, project=key.project, user=key.created_by)
