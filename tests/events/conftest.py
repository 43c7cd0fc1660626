"""Fixtures of the event log tests: a session of the personas' team to append to."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def session(personas: Any) -> Any:
    from agentide.projects.models import Project
    from agentide.sessions.services import create_session

    project = Project.objects.create(
        team=personas.team, name="Demo", slug="demo", created_by=personas.owner
    )
    return create_session(personas.membership(personas.member), project, "Debugging")
