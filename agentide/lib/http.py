"""Request types for views behind @login_required, who sent a request, streamed answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse

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


def stream_response(
    request: HttpRequest,
    chunks: Iterator[bytes],
    close: Callable[[], None],
    *,
    content_type: str,
) -> StreamingHttpResponse:
    """A response that sends ``chunks`` as they come, holding one at a time.

    Under ASGI (Daphne) Django would collect a plain iterator into a list before sending it,
    so there each chunk is pulled in a worker thread by an async iterator; under WSGI (and
    the test client) the iterator is passed through. ``close`` runs when sending ends.
    """
    if not isinstance(request, ASGIRequest):
        return StreamingHttpResponse(_closing(chunks, close), content_type=content_type)
    return StreamingHttpResponse(_async_chunks(chunks, close), content_type=content_type)


def _closing(chunks: Iterator[bytes], close: Callable[[], None]) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        close()


async def _async_chunks(chunks: Iterator[bytes], close: Callable[[], None]) -> AsyncIterator[bytes]:
    pull = sync_to_async(lambda: next(chunks, None), thread_sensitive=False)
    try:
        while (chunk := await pull()) is not None:
            yield chunk
    finally:
        await sync_to_async(close, thread_sensitive=False)()
