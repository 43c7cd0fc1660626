"""Team pages: create a team, see its projects and members, manage members."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agentide.accounts import services
from agentide.accounts.forms import AddMemberForm, RoleForm, TeamForm
from agentide.accounts.models import Membership, Role
from agentide.lib.http import AuthedRequest
from agentide.projects.models import Project


def _errors(exc: ValidationError) -> list[str]:
    return [str(m) for m in exc.messages]


@login_required
@require_GET
def home(request: AuthedRequest) -> HttpResponse:
    """The first team's page, or an empty state inviting the user to create one."""
    first = Membership.objects.filter(user=request.user).select_related("team").first()
    if first is not None:
        return redirect("team_detail", team_slug=first.team.slug)
    return render(
        request,
        "accounts/home.html",
        {"form": TeamForm(), "refusal": services.team_creation_refusal(request.user)},
    )


@login_required
@require_http_methods(["GET", "POST"])
def team_create(request: AuthedRequest) -> HttpResponse:
    form = TeamForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            team = services.create_team(request.user, form.cleaned_data["name"])
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Team {team.name} created.")
            return redirect("team_detail", team_slug=team.slug)
    return render(
        request,
        "accounts/team_create.html",
        {"form": form, "refusal": services.team_creation_refusal(request.user)},
        status=400 if form.errors else 200,
    )


def _members_context(membership: Membership, **extra: object) -> dict[str, object]:
    return {
        "membership": membership,
        "team": membership.team,
        "members": membership.team.memberships.select_related("user").order_by("user__username"),
        "add_form": extra.pop("add_form", AddMemberForm()),
        "role_choices": Role.choices,
        **extra,
    }


def _render_members(
    request: AuthedRequest,
    membership: Membership,
    *,
    errors: list[str] | None = None,
    **extra: object,
) -> HttpResponse:
    """The members panel alone for htmx, the whole team page otherwise."""
    errors = errors or []
    context = _members_context(membership, errors=errors, **extra)
    if request.htmx:
        # Refusals come back as 200 with the errors in the fragment: htmx 2.0 leaves content
        # swapped in from an error status unprocessed, so the next submit would reload the page.
        return render(request, "accounts/_members.html", context)
    # Without htmx the page reloads: carry the outcome over as messages.
    for error in errors:
        messages.error(request, error)
    if extra.get("notice"):
        messages.success(request, str(extra["notice"]))
    return redirect("team_detail", team_slug=membership.team.slug)


@login_required
@require_GET
def team_detail(request: AuthedRequest, team_slug: str) -> HttpResponse:
    membership = services.get_membership_for_user(request.user, team_slug)
    projects = Project.objects.filter(team=membership.team).order_by("name")
    context = _members_context(membership, projects=projects)
    return render(request, "accounts/team_detail.html", context)


@login_required
@require_POST
def member_add(request: AuthedRequest, team_slug: str) -> HttpResponse:
    actor = services.get_membership_for_user(request.user, team_slug, manage=True)
    form = AddMemberForm(request.POST)
    if form.is_valid():
        try:
            added = services.add_member(
                actor, form.cleaned_data["identifier"], form.cleaned_data["role"]
            )
        except ValidationError as exc:
            return _render_members(request, actor, add_form=form, errors=_errors(exc))
        return _render_members(request, actor, notice=f"{added.user.username} joined the team.")
    errors = [str(e) for errs in form.errors.values() for e in errs]
    return _render_members(request, actor, add_form=form, errors=errors)


@login_required
@require_POST
def member_role(request: AuthedRequest, team_slug: str, membership_id: int) -> HttpResponse:
    actor = services.get_membership_for_user(request.user, team_slug, manage=True)
    target = get_object_or_404(Membership, pk=membership_id, team=actor.team)
    form = RoleForm(request.POST)
    if not form.is_valid():
        return _render_members(request, actor, errors=["Choose a valid role."])
    try:
        services.change_role(actor, target, form.cleaned_data["role"])
    except ValidationError as exc:
        return _render_members(request, actor, errors=_errors(exc))
    actor.refresh_from_db()
    return _render_members(
        request, actor, notice=f"{target.user.username} is now {target.get_role_display()}."
    )


@login_required
@require_POST
def member_remove(request: AuthedRequest, team_slug: str, membership_id: int) -> HttpResponse:
    actor = services.get_membership_for_user(request.user, team_slug)
    target = get_object_or_404(Membership, pk=membership_id, team=actor.team)
    leaving = target.pk == actor.pk
    try:
        services.remove_member(actor, target)
    except ValidationError as exc:
        return _render_members(request, actor, errors=_errors(exc))
    if leaving:
        messages.success(request, f"You left {actor.team.name}.")
        return _redirect_home(request)
    return _render_members(request, actor, notice=f"Removed {target.user.username}.")


@login_required
@require_POST
def team_leave(request: AuthedRequest, team_slug: str) -> HttpResponse:
    membership = services.get_membership_for_user(request.user, team_slug)
    try:
        services.leave_team(membership)
    except ValidationError as exc:
        for message in _errors(exc):
            messages.error(request, message)
        return redirect("team_detail", team_slug=team_slug)
    messages.success(request, f"You left {membership.team.name}.")
    return _redirect_home(request)


def _redirect_home(request: AuthedRequest) -> HttpResponse:
    if request.htmx:
        return HttpResponse(status=204, headers={"HX-Redirect": "/"})
    return redirect("home")
