"""``/v1/`` views of the API's own: what is not a container or a response."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse

from agentide.api.errors import api_view

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


@api_view(ALL_METHODS)
async def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any ``/v1/`` path no route serves: a 404 in OpenAI's shape (after authentication).
    Async: nothing to wait for but the key's check, which ``api_view`` runs in a thread."""
    raise Http404(f"Unknown API path: /v1/{path[:200]}. See docs/api.md for what is supported.")
