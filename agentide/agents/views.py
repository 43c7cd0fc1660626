"""Agent pages: a project's model provider settings and its connection check; a session's
approval mode and the decisions on commands waiting for approval."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from agentide.agents import services
from agentide.agents.backends.base import ModelError
from agentide.agents.forms import ModelProviderForm
from agentide.lib.http import AuthedRequest
from agentide.sessions.services import get_session_for_user


@login_required
@require_http_methods(["GET", "POST"])
def provider_settings(request: AuthedRequest, team_slug: str, project_slug: str) -> HttpResponse:
    provider, membership = services.get_provider_for_user(
        request.user, team_slug, project_slug, manage=True
    )
    form = ModelProviderForm(request.POST or None, instance=provider)
    if request.method == "POST" and form.is_valid():
        changes = {name: form.cleaned_data[name] for name in form.Meta.fields}
        try:
            services.update_provider(
                membership,
                services.provider_for_project(provider.project),
                changes,
                api_key=form.cleaned_data["api_key"],
                forget_api_key=form.cleaned_data["forget_api_key"],
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Model provider saved.")
            return redirect("provider_settings", team_slug=team_slug, project_slug=project_slug)
    status = 400 if form.errors else 200
    return render(
        request,
        "agents/provider_settings.html",
        {
            "form": form,
            "provider": services.provider_for_project(provider.project),
            "project": provider.project,
            "team": provider.project.team,
            "membership": membership,
        },
        status=status,
    )


@login_required
@require_POST
def provider_check(request: AuthedRequest, team_slug: str, project_slug: str) -> HttpResponse:
    provider, membership = services.get_provider_for_user(
        request.user, team_slug, project_slug, manage=True
    )
    ok, detail = False, ""
    if provider.pk is None:
        detail = "Save the settings first."
    else:
        try:
            detail = services.check_connection(membership, provider)
            ok = True
        except ModelError as exc:
            detail = exc.message
    if request.htmx:
        return render(request, "agents/_connection_check.html", {"ok": ok, "detail": detail})
    (messages.success if ok else messages.error)(
        request, f"Connection {'works' if ok else 'failed'}: {detail}"
    )
    return redirect("provider_settings", team_slug=team_slug, project_slug=project_slug)


@login_required
@require_POST
def approval_mode(request: AuthedRequest, session_id: int) -> HttpResponse:
    session, membership = get_session_for_user(request.user, session_id, write=True)
    services.set_approval_mode(membership, session, request.POST.get("required") == "on")
    if request.htmx:
        return HttpResponse(status=204)
    return redirect("session_detail", session_id=session.pk)


@login_required
@require_POST
def approval_decide(request: AuthedRequest, session_id: int, approval_id: int) -> HttpResponse:
    session, membership = get_session_for_user(request.user, session_id, write=True)
    services.decide_approval(
        membership,
        session,
        approval_id,
        approve=request.POST.get("decision") == "approve",
        reason=request.POST.get("reason", ""),
    )
    if request.htmx:
        return HttpResponse(status=204)  # the decision reaches every page as an event
    return redirect("session_detail", session_id=session.pk)
