"""Request bodies bounded as they are read, not after.

A view that takes files declares its limit with ``@upload_limit``; every other view takes at
most ``DATA_UPLOAD_MAX_MEMORY_SIZE``. ``UploadLimitMiddleware`` (before CSRF, which is the
first to read a POST) checks Content-Length before anything of the body is read, then parses
multipart bodies through ``CappedUploadHandler``, which stops at the limit a body that sent
no Content-Length or a false one. Over the limit, the view's ``refuse`` answers 413 with a
message that says what the limit is; nothing of the upload is kept.

The server in front (Daphne buffers a request's body to a temporary file before the
application sees it) is not bounded here: a reverse proxy's body limit does that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest, HttpResponse

Refusal = Callable[..., HttpResponse]
View = TypeVar("View", bound=Callable[..., Any])

LIMIT_ATTR = "upload_limit"
_OVER_ATTR = "_upload_over_limit"
BODY_METHODS = {"POST", "PUT", "PATCH"}


def too_large_message(limit: int) -> str:
    return f"Too large: this form takes at most {_size(limit)}. Nothing was uploaded."


def plain_refusal(request: HttpRequest, message: str, *args: Any, **kwargs: Any) -> HttpResponse:
    """A 413 with the message as plain text (views that declare no refusal of their own)."""
    return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")


def upload_limit(
    limit: Callable[[], int], refuse: Refusal = plain_refusal
) -> Callable[[View], View]:
    """Declare the largest request body ``view`` accepts (``limit()`` is read per request)
    and how to refuse a bigger one: ``refuse(request, message, *view_args, **view_kwargs)``
    returns the 413 response (it runs before the view, so it checks access itself).

    Put it innermost (below ``login_required`` and friends): they copy it outwards."""

    def decorate(view: View) -> View:
        setattr(view, LIMIT_ATTR, (limit, refuse))
        return view

    return decorate


class CappedUploadHandler(FileUploadHandler):
    """Counts the file bytes of a multipart body and stops the upload past ``limit``."""

    def __init__(self, request: HttpRequest, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.limit:
            setattr(self.request, _OVER_ATTR, True)
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler (memory or temporary file) holds the file


class UploadLimitMiddleware:
    """Refuses request bodies over their view's limit before or while they are read."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponse | None:
        if request.method not in BODY_METHODS:
            return None
        limit_of, refuse = getattr(view, LIMIT_ATTR, (_form_limit, plain_refusal))
        limit = int(limit_of())
        message = too_large_message(limit)
        multipart = request.content_type == "multipart/form-data"
        # A multipart body also carries its form fields (at most DATA_UPLOAD_MAX_MEMORY_SIZE);
        # the file bytes themselves are counted exactly below.
        allowed = limit + (settings.DATA_UPLOAD_MAX_MEMORY_SIZE if multipart else 0)
        if _content_length(request) > allowed:
            return refuse(request, message, *args, **kwargs)
        if not multipart:
            return None
        request.upload_handlers.insert(0, CappedUploadHandler(request, limit))
        try:
            request.POST  # noqa: B018 - parse now, through the cap, before CSRF does
        except RequestDataTooBig:
            return refuse(request, too_large_message(settings.DATA_UPLOAD_MAX_MEMORY_SIZE),
                          *args, **kwargs)
        if getattr(request, _OVER_ATTR, False):
            return refuse(request, message, *args, **kwargs)
        return None


def _form_limit() -> int:
    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


def _content_length(request: HttpRequest) -> int:
    try:
        return max(0, int(request.META.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"
