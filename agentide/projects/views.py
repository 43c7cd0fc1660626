"""Project pages: create, view (its sessions come from the sessions app's
``{% project_sessions %}`` tag), and settings."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from agentide.accounts.services import get_membership_for_user
from agentide.lib.http import AuthedRequest
from agentide.projects import services
from agentide.projects.forms import ProjectCheckpointsForm, ProjectForm, ProjectSettingsForm


@login_required
@require_http_methods(["GET", "POST"])
def project_create(request: AuthedRequest, team_slug: str) -> HttpResponse:
    actor = get_membership_for_user(request.user, team_slug, write=True)
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            project = services.create_project(
                actor, form.cleaned_data["name"], form.cleaned_data["description"]
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Project {project.name} created.")
            return redirect("project_detail", team_slug=team_slug, project_slug=project.slug)
    status = 400 if form.errors else 200
    return render(
        request, "projects/project_create.html", {"form": form, "team": actor.team}, status=status
    )


@login_required
@require_GET
def project_detail(request: AuthedRequest, team_slug: str, project_slug: str) -> HttpResponse:
    project, membership = services.get_project_for_user(request.user, team_slug, project_slug)
    return render(
        request,
        "projects/project_detail.html",
        {
            "project": project,
            "team": project.team,
            "membership": membership,
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def project_settings(request: AuthedRequest, team_slug: str, project_slug: str) -> HttpResponse:
    project, membership = services.get_project_for_user(
        request.user,
        team_slug,
        project_slug,
        manage=True,
    )
    form = ProjectSettingsForm(request.POST or None, instance=project)
    # One page, one submit: the sandbox settings and the checkpoint settings.
    checkpoints_form = ProjectCheckpointsForm(request.POST or None, instance=project)
    if request.method == "POST":
        if form.is_valid() & checkpoints_form.is_valid():
            changes = {**form.cleaned_data, **checkpoints_form.cleaned_data}
            try:
                services.update_project_settings(membership, project, changes)
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(request, "Project settings saved.")
                return redirect("project_settings", team_slug=team_slug, project_slug=project.slug)
        # A ModelForm writes into its instance while validating: show what is really saved.
        project.refresh_from_db()
    status = 400 if form.errors or checkpoints_form.errors else 200
    return render(
        request,
        "projects/project_settings.html",
        {"form": form, "checkpoints_form": checkpoints_form, "project": project,
         "team": project.team, "membership": membership},
        status=status,
    )
