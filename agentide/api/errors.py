"""Errors of ``/v1/`` in OpenAI's shape, and the decorator every ``/v1/`` view wears.

``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status, so the
openai SDK raises the exception a program expects (401 AuthenticationError, 404 NotFoundError,
429 RateLimitError, ...).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from agentide.api import auth
from agentide.quotas.services import QuotaExceeded

# Quotas spent for the period answer "insufficient_quota"; the rest (concurrency, size) are
# limits a caller may retry under later.
PERIOD_QUOTAS = {
    "sandbox_hours_per_month", "tokens_per_month", "cost_per_month", "suspended",
}


class ApiError(Exception):
    """An error answered to an API client as ``{"error": {...}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def error_response(err: ApiError) -> JsonResponse:
    """The JSON response of ``err``."""
    body = {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    }
    response = JsonResponse(body, status=err.status)
    for name, value in err.headers.items():
        response[name] = value
    return response


def api_error_for(exc: Exception) -> ApiError | None:
    """The ApiError that answers ``exc``, or None for an exception that is a server fault."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QuotaExceeded):
        kind = "insufficient_quota" if exc.limit in PERIOD_QUOTAS else "rate_limit_exceeded"
        # A quota holds until someone acts (or the period turns): the SDK's automatic retries
        # would only repeat the refusal.
        return ApiError(429, " ".join(exc.messages), type=kind, code=exc.limit,
                        headers={"x-should-retry": "false"})
    if isinstance(exc, ValidationError):
        param = None
        if hasattr(exc, "error_dict") and len(exc.error_dict) == 1:
            param = next(iter(exc.error_dict))
            param = None if param == "__all__" else param
        return ApiError(400, " ".join(exc.messages), param=param)
    if isinstance(exc, Http404):
        return ApiError(404, str(exc) or "Not found.", code="not_found")
    if isinstance(exc, PermissionDenied):
        return ApiError(
            403, str(exc) or "Permission denied.", type="permission_error", code="forbidden"
        )
    return None


def method_not_allowed(request: HttpRequest, methods: tuple[str, ...]) -> JsonResponse:
    response = error_response(
        ApiError(
            405,
            f"{request.method} is not supported here: use {', '.join(methods)}.",
            code="method_not_allowed",
        )
    )
    response["Allow"] = ", ".join(methods)
    return response


def api_view(methods: tuple[str, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a ``/v1/`` view: CSRF-exempt (bearer auth, no cookie is read), ``methods`` only
    (405 otherwise), the caller authenticated onto ``request.api`` (an ``auth.ApiCaller``),
    and ApiError, QuotaExceeded (429), ValidationError (400), Http404 (404) and
    PermissionDenied (403) answered in OpenAI's shape. Sync and async views alike."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                if request.method not in methods:
                    return method_not_allowed(request, methods)
                try:
                    request.api = await sync_to_async(auth.authenticate)(request)  # type: ignore[attr-defined]
                    return await view(request, *args, **kwargs)
                except Exception as exc:
                    err = api_error_for(exc)
                    if err is None:
                        raise
                    return error_response(err)

            return csrf_exempt(async_wrapper)

        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return method_not_allowed(request, methods)
            try:
                request.api = auth.authenticate(request)  # type: ignore[attr-defined]
                response: HttpResponse = view(request, *args, **kwargs)
                return response
            except Exception as exc:
                err = api_error_for(exc)
                if err is None:
                    raise
                return error_response(err)

        return csrf_exempt(wrapper)

    return decorate
