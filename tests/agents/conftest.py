"""Fixtures of the agent tests: a project with a provider pointing at the fake server, a
session with a real sandbox (destroyed afterwards), and task enqueues recorded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fake_openai import API_KEY, MODEL, FakeOpenAI


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def lab(personas: Any) -> Any:
    from agentide.projects.models import Project

    return Project.objects.create(
        team=personas.team, name="Lab", slug="lab", created_by=personas.owner
    )


@pytest.fixture
def provider(lab: Any, fake: FakeOpenAI) -> Any:
    from agentide.agents.models import ModelProvider

    provider = ModelProvider(project=lab, kind="responses", base_url=fake.url, model=MODEL)
    provider.set_api_key(API_KEY)
    provider.save()
    return provider


@pytest.fixture
def agent_session(personas: Any, lab: Any) -> Iterator[Any]:
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions.services import create_session

    session = create_session(personas.membership(personas.member), lab, "Agent work")
    yield session
    sandboxes.destroy_sandbox(session)


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record wake-ups of sessions' schedulers instead of sending the task to the broker:
    in-process tests run the cells themselves."""
    from agentide.sessions import execution

    sent: list[int] = []
    monkeypatch.setattr(execution, "wake_scheduler", sent.append)
    return sent
