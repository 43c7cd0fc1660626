"""Request types for views behind @login_required, and who sent a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.http import HttpRequest

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    from agentide.accounts.models import User


class AuthedRequest(HttpRequest):
    """An HttpRequest whose user is signed in and which went through HtmxMiddleware."""

    user: User
    htmx: HtmxDetails


def client_ip(request: HttpRequest) -> str | None:
    """The address of the client that sent ``request``.

    X-Forwarded-For is written by whoever sends the request, so only the entries appended by
    the site's own proxies count: with ``AGENTIDE_TRUSTED_PROXY_COUNT`` = N, the client is the
    N-th entry from the right (each proxy appends the address it received the request from).
    With N = 0, or a header shorter than N, it is REMOTE_ADDR, the peer of this process.
    """
    remote = request.META.get("REMOTE_ADDR") or None
    count = settings.AGENTIDE_TRUSTED_PROXY_COUNT
    if count <= 0:
        return remote
    forwarded = [
        part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
    ]
    forwarded = [part for part in forwarded if part]
    if len(forwarded) < count:
        return remote
    return forwarded[-count]
