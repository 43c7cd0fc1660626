from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from agentide.accounts.models import Membership


def teams(request: HttpRequest) -> dict[str, Any]:
    """The signed-in user's memberships, for the team switcher in the navigation."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"my_memberships": []}
    return {
        "my_memberships": Membership.objects.filter(user=user).select_related("team"),
    }
