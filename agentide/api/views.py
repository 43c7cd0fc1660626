"""Views of the API's own: ``/v1/`` paths no route serves, and the team page's section where
owners and admins create and revoke keys."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from agentide.accounts.models import Membership
from agentide.accounts.services import get_membership_for_user
from agentide.api import keys
from agentide.api.errors import api_view
from agentide.api.forms import ApiKeyForm
from agentide.api.templatetags.api_keys import keys_context
from agentide.lib.http import AuthedRequest

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


@api_view(ALL_METHODS)
async def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any ``/v1/`` path no route serves: a 404 in OpenAI's shape (after authentication).
    Async: nothing to wait for but the key's check, which ``api_view`` runs in a thread."""
    raise Http404(f"Unknown API path: /v1/{path[:200]}. See docs/api.md for what is supported.")


# --- the team page's API keys section (browser, session auth, CSRF) ------------------------------


def render_keys(request: AuthedRequest, membership: Membership, *, status: int = 200,
                **extra: Any) -> HttpResponse:
    """The keys section alone for htmx, a page holding it otherwise (never a redirect: a
    new key's secret is shown in this response and kept nowhere)."""
    context = keys_context(membership, **extra)
    template = "api/_keys.html" if request.htmx else "api/keys_page.html"
    response = render(request, template, context, status=status)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def key_create(request: AuthedRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_for_user(request.user, team_slug, manage=True)
    form = ApiKeyForm(membership.team, request.POST)
    if not form.is_valid():
        errors = [str(e) for errs in form.errors.values() for e in errs]
        return render_keys(request, membership, form=form, errors=errors)
    try:
        key, secret = keys.create_key_for_member(
            membership, project=form.cleaned_data["project"], name=form.cleaned_data["name"]
        )
    except ValidationError as exc:
        return render_keys(request, membership, form=form, errors=exc.messages)
    return render_keys(request, membership, created=key, secret=secret)


@login_required
@require_POST
def key_revoke(request: AuthedRequest, team_slug: str, key_id: int) -> HttpResponse:
    membership = get_membership_for_user(request.user, team_slug, manage=True)
    key = keys.revoke_key_for_member(membership, key_id)
    return render_keys(request, membership, notice=f"Revoked the key {key.name}.")
