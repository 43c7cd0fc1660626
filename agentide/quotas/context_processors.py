from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from agentide.quotas.services import banners_for


def quota_banners(request: HttpRequest) -> dict[str, Any]:
    """Warnings about the signed-in user's teams nearing or past a monthly limit."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"quota_banners": []}
    return {"quota_banners": banners_for(user)}
