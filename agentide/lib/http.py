"""Request types for views behind @login_required (for type checking only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    from agentide.accounts.models import User


class AuthedRequest(HttpRequest):
    """An HttpRequest whose user is signed in and which went through HtmxMiddleware."""

    user: User
    htmx: HtmxDetails
