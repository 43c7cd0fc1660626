"""Session pages."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from agentide.lib.http import AuthedRequest
from agentide.projects.services import get_project_for_user
from agentide.sessions import services


@login_required
@require_POST
def session_create(request: AuthedRequest, team_slug: str, project_slug: str) -> HttpResponse:
    project, membership = get_project_for_user(
        request.user,
        team_slug,
        project_slug,
        write=True,
    )
    try:
        session = services.create_session(membership, project, request.POST.get("title", ""))
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect("project_detail", team_slug=team_slug, project_slug=project_slug)
    return redirect("session_detail", session_id=session.pk)


@login_required
@require_GET
def session_detail(request: AuthedRequest, session_id: int) -> HttpResponse:
    session, membership = services.get_session_for_user(request.user, session_id)
    return render(
        request,
        "sessions/session_detail.html",
        {
            "session": session,
            "project": session.project,
            "team": session.project.team,
            "membership": membership,
        },
    )
