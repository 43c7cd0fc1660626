"""Sessions as pages of the apps below show them: a project page lists its sessions through
this tag, so ``agentide.projects`` never imports the sessions app."""

from __future__ import annotations

from django import template
from django.db.models import QuerySet

from agentide.projects.models import Project
from agentide.sessions.models import Session
from agentide.sessions.services import sessions_for_project

register = template.Library()


@register.simple_tag
def project_sessions(project: Project) -> QuerySet[Session]:
    """``{% project_sessions project as sessions %}``: the project's sessions, most recently
    active first."""
    return sessions_for_project(project)
