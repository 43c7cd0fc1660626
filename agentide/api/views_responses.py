"""``/v1/responses``: create (JSON, SSE stream or background), retrieve, delete, input items,
cancel. Thin: parse, one service, answer; the streaming and blocking answers follow the cell
through ``api.stream``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from agentide.api import responses
from agentide.api.auth import ApiCaller
from agentide.api.errors import ApiError, api_view
from agentide.api.models import ApiResponse
from agentide.api.shapes import ResponseFold
from agentide.api.stream import KEEPALIVE, follow, sse, until_done
from agentide.sessions import execution

log = logging.getLogger(__name__)
MAX_LIST_LIMIT = 100


def _body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body or b"null")
    except RequestDataTooBig:
        raise ApiError(413, "The request body is too large.", code="request_too_large") from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None


@api_view(("POST",))
async def create(request: HttpRequest) -> HttpResponseBase:
    caller: ApiCaller = request.api  # type: ignore[attr-defined]
    parsed = responses.parse_request(_body(request))
    response = await sync_to_async(responses.create_response)(caller, parsed)
    fold = ResponseFold(responses.request_echo(response))
    if parsed.background:
        return JsonResponse(fold.response(status="queued"))
    if parsed.stream:
        stream = StreamingHttpResponse(
            _stream(caller, response, fold), content_type="text/event-stream"
        )
        stream["Cache-Control"] = "no-cache"
        stream["X-Accel-Buffering"] = "no"
        return stream
    try:
        await until_done(response)
        fold = await sync_to_async(responses.fold_response)(response)
    finally:
        await _cancel_unless_done(caller, response, fold)
    return JsonResponse(fold.response())


async def _stream(
    caller: ApiCaller, response: ApiResponse, fold: ResponseFold
) -> AsyncIterator[bytes]:
    try:
        # The first bytes go out now, before the worker has even claimed the cell.
        yield b"".join(sse(event) for event in fold.opening_events())
        async for batch in follow(response, fold):
            yield b"".join(sse(event) for event in batch) if batch else KEEPALIVE
    finally:
        await _cancel_unless_done(caller, response, fold)


async def _cancel_unless_done(caller: ApiCaller, response: ApiResponse, fold: ResponseFold) -> None:
    """The client went away before the end: cancel the cell (shielded, so the request task's
    own cancellation cannot cut the cancel short)."""
    if fold.done:
        return
    try:
        await asyncio.shield(
            sync_to_async(execution.cancel_cell)(
                caller.membership, response.session, response.cell_id
            )
        )
    except Exception:
        log.warning("cancelling the cell of %s failed", response.public_id, exc_info=True)


@api_view(("GET", "DELETE"))
def detail(request: HttpRequest, response_id: str) -> HttpResponse:
    caller: ApiCaller = request.api  # type: ignore[attr-defined]
    response = responses.get_response(caller, response_id)
    if request.method == "DELETE":
        responses.delete_response(caller, response)
        return JsonResponse({"id": response_id, "object": "response.deleted", "deleted": True})
    if request.GET.get("stream") not in (None, "false"):
        raise ApiError(400, "Streaming a stored response is not supported.", param="stream")
    return JsonResponse(responses.fold_response(response).response())


@api_view(("POST",))
def cancel(request: HttpRequest, response_id: str) -> HttpResponse:
    caller: ApiCaller = request.api  # type: ignore[attr-defined]
    response = responses.get_response(caller, response_id)
    responses.cancel_response(caller, response)
    return JsonResponse(responses.fold_response(response).response())


@api_view(("GET",))
def input_items(request: HttpRequest, response_id: str) -> HttpResponse:
    caller: ApiCaller = request.api  # type: ignore[attr-defined]
    response = responses.get_response(caller, response_id)
    items = responses.input_items(response)
    order = request.GET.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "order is asc or desc.", param="order")
    try:
        limit = int(request.GET.get("limit", "20"))
    except ValueError:
        raise ApiError(400, "limit must be an integer.", param="limit") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ApiError(400, f"limit is between 1 and {MAX_LIST_LIMIT}.", param="limit")
    if order == "desc":
        items.reverse()
    after = request.GET.get("after")
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise ApiError(400, "after must be an item id of this list.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return JsonResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else "",
            "last_id": page[-1]["id"] if page else "",
            "has_more": len(items) > limit,
        }
    )
