"""Fixtures of the notebook tests: a project and a session of the personas' team."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def project(personas: Any) -> Any:
    from agentide.projects.models import Project

    return Project.objects.create(
        team=personas.team, name="Demo", slug="demo", created_by=personas.owner
    )


@pytest.fixture
def session(personas: Any, project: Any) -> Any:
    from agentide.sessions.services import create_session

    return create_session(personas.membership(personas.member), project, "Debugging")


@pytest.fixture
def no_tasks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record wake-ups of sessions' schedulers instead of sending the task to a broker."""
    from agentide.sessions import execution

    sent: list[int] = []
    monkeypatch.setattr(execution, "wake_scheduler", sent.append)
    return sent
