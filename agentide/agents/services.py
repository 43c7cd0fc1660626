"""Agent workflows: provider settings, the provider access helper, connection checks."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from agentide.accounts.models import Membership, User
from agentide.accounts.services import require
from agentide.agents.backends.base import ModelError, ProviderConfig
from agentide.agents.backends.openai import make_backend
from agentide.agents.models import ModelProvider
from agentide.lib.sealed import SealError
from agentide.projects.models import Project
from agentide.projects.services import get_project_for_user


def get_provider_for_user(
    user: User, team_slug: str, project_slug: str, *, manage: bool = False
) -> tuple[ModelProvider, Membership]:
    """Return the project's provider settings (unsaved defaults when none exist yet) and the
    user's membership. Raises Http404 for other teams' projects, PermissionDenied when
    ``manage`` is asked of a member or reviewer."""
    project, membership = get_project_for_user(user, team_slug, project_slug, manage=manage)
    return provider_for_project(project), membership


def provider_for_project(project: Project) -> ModelProvider:
    """The project's provider settings, or unsaved defaults."""
    try:
        return ModelProvider.objects.select_related("project__team").get(project=project)
    except ModelProvider.DoesNotExist:
        return ModelProvider(project=project)


@transaction.atomic
def update_provider(
    actor: Membership,
    provider: ModelProvider,
    changes: dict[str, Any],
    *,
    api_key: str = "",
    forget_api_key: bool = False,
) -> ModelProvider:
    """Save validated ``changes``; seal ``api_key`` when given, drop the stored key when
    ``forget_api_key``. Owners and admins only."""
    require(actor, manage=True)
    if provider.project.team_id != actor.team_id:
        raise ValidationError("This provider belongs to another team.")
    for field, value in changes.items():
        setattr(provider, field, value)
    if forget_api_key:
        provider.set_api_key("")
    elif api_key:
        provider.set_api_key(api_key)
    provider.full_clean()
    provider.save()
    return provider


def provider_config(provider: ModelProvider) -> ProviderConfig:
    """What a backend needs to reach the provider, with the API key resolved.

    Raises a permanent ModelError when no usable key is configured.
    """
    key = ""
    if provider.api_key_env:
        if provider.api_key_env not in settings.AGENTIDE_MODEL_KEY_VARS:
            raise ModelError(
                f"{provider.api_key_env} is not an allowed API key variable.", permanent=True
            )
        key = os.environ.get(provider.api_key_env, "")
        if not key:
            raise ModelError(
                f"The worker's environment has no {provider.api_key_env}.", permanent=True
            )
    elif provider.has_stored_key:
        try:
            key = provider.stored_api_key()
        except SealError as exc:
            raise ModelError(str(exc), permanent=True) from exc
    return ProviderConfig(
        kind=provider.kind,  # type: ignore[arg-type]
        model=provider.model,
        api_key=key,
        base_url=provider.base_url,
        instructions=provider.instructions,
        stores_responses=provider.stores_responses,
        timeout_s=settings.AGENTIDE_MODEL_TIMEOUT_S,
        max_retries=settings.AGENTIDE_MODEL_MAX_RETRIES,
    )


def check_connection(actor: Membership, provider: ModelProvider) -> str:
    """Send one tiny request with the saved settings; return the model's answer.

    Owners and admins only. Raises ModelError saying what is wrong.
    """
    require(actor, manage=True)
    text, _usage = make_backend(provider_config(provider)).complete("Reply with the word OK.")
    return text
