"""``{% api_keys_panel membership %}``: the team page's API keys section."""

from __future__ import annotations

from typing import Any

from django import template

from agentide.accounts.models import Membership
from agentide.api.forms import ApiKeyForm
from agentide.api.keys import team_keys

register = template.Library()


def keys_context(membership: Membership, **extra: Any) -> dict[str, Any]:
    """What ``api/_keys.html`` shows: the team's keys (never a secret but the one just
    created, passed in ``extra`` once) and the create form for owners and admins."""
    return {
        "membership": membership,
        "team": membership.team,
        "keys": team_keys(membership),
        "form": extra.pop("form", None) or ApiKeyForm(membership.team),
        **extra,
    }


@register.inclusion_tag("api/_keys.html")
def api_keys_panel(membership: Membership) -> dict[str, Any]:
    return keys_context(membership)
