"""Following a response's cell as it runs, for the SSE stream and the blocking JSON answer.

The session's channel-layer group (the one the notebook page listens on) wakes the follower
when events are appended; the follower then reads the cell's new events from the log and
folds them. Nothing polls: between wake-ups it waits on the channel, with a keep-alive
timeout that also re-reads the log (a wake-up lost by the layer costs at most that long).

A client that goes away (Django cancels the request's task on ``http.disconnect``) cancels the
cell, so no turn runs on for nobody and no cell is left running: ``follow``'s caller does that
in a ``finally`` (see ``views_responses``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from agentide.api import responses
from agentide.api.models import ApiResponse
from agentide.api.shapes import ResponseFold
from agentide.events import registry
from agentide.events.log import session_group

# Seconds between keep-alive comments on a quiet stream (and re-reads of the log).
KEEPALIVE_S = 15.0


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event as the openai SDK reads it (``event:`` then ``data:``)."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


KEEPALIVE = b": keep-alive\n\n"
# The events that end a cell (a prompt refused at creation ends with its cell.created).
END_TYPES = frozenset({registry.CELL_FINISHED, registry.CELL_CREATED})


async def follow(response: ApiResponse, fold: ResponseFold) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield the stream events the cell's new events make, as they are appended, until the
    cell is done (``fold.done``). Yields ``[]`` after a quiet ``KEEPALIVE_S``."""
    layer = get_channel_layer()
    group = session_group(response.session_id)
    channel = await layer.new_channel() if layer is not None else ""
    if layer is not None:
        await layer.group_add(group, channel)
    read = sync_to_async(responses.cell_events)
    try:
        while True:
            # Subscribed before reading: an event appended meanwhile wakes the next wait.
            while batch := await read(response, fold.last_seq):
                out: list[dict[str, Any]] = []
                for message in batch:
                    out.extend(fold.feed(message))
                if out:
                    yield out
                if fold.done:
                    return
            if not await _wake(layer, channel, fold.last_seq):
                yield []
    finally:
        if layer is not None:
            await layer.group_discard(group, channel)


async def until_done(response: ApiResponse) -> None:
    """Wait until the response's cell is done, for an answer that needs only the end: woken
    by the cell's ``cell.finished`` alone (no read of the log per event), with the cell's
    status re-read after a quiet ``KEEPALIVE_S``."""
    layer = get_channel_layer()
    group = session_group(response.session_id)
    channel = await layer.new_channel() if layer is not None else ""
    if layer is not None:
        await layer.group_add(group, channel)
    done = sync_to_async(responses.cell_done)
    try:
        # Subscribed before reading: an end written meanwhile wakes the next wait.
        while not await done(response):
            await _wake(layer, channel, 0, cell_id=response.cell_id, types=END_TYPES)
    finally:
        if layer is not None:
            await layer.group_discard(group, channel)


async def _wake(
    layer: Any,
    channel: str,
    last_seq: int,
    *,
    cell_id: int | None = None,
    types: frozenset[str] | None = None,
) -> bool:
    """Wait for an event after ``last_seq`` of the session (of ``cell_id`` and ``types`` when
    given); False after a quiet ``KEEPALIVE_S`` (or without a channel layer)."""
    if layer is None:
        await asyncio.sleep(KEEPALIVE_S)
        return False
    deadline = asyncio.get_running_loop().time() + KEEPALIVE_S
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return False
        try:
            message = await asyncio.wait_for(layer.receive(channel), timeout=left)
        except TimeoutError:
            return False
        # Presence and other messages of the group are not events of the log.
        event = message.get("event") if message.get("type") == "session.event" else None
        if (
            event is not None
            and event.get("seq", 0) > last_seq
            and (cell_id is None or event.get("cell_id") == cell_id)
            and (types is None or event.get("type") in types)
        ):
            return True
