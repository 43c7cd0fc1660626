"""The event log's verbs: append with a gap-free ``seq``, publish on commit, replay after a seq.

``append_event`` is the only writer of ``Event`` rows (``append_events`` the batched one).
Each runs in the caller's transaction; after commit the event goes to the session's
channel-layer group, where consumers forward it to browsers. The channel layer may drop
messages: consumers fill gaps from the database by ``seq`` (``events_after``).

This floor imports nothing from the apps above it (accounts and lib are below): the session
row is reached through the ``Event.session`` foreign key's model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers
from django.conf import settings
from django.db import connection, models, transaction
from django.http import Http404
from django.utils import timezone

from agentide.accounts.models import User
from agentide.events import registry
from agentide.events.models import Event

log = logging.getLogger(__name__)


# An imported transcript's events keep their recorded actor name as plain text under
# IMPORTED_ACTOR and are flagged with IMPORTED; they are never linked to a user here.
IMPORTED = "_imported"
IMPORTED_ACTOR = "_actor"


def session_group(session_id: int) -> str:
    """The channel-layer group name of ``session_id``'s viewers (built from the pk only)."""
    return f"notebook.session.{int(session_id)}"


def _sessions() -> models.Manager[Any]:
    """The sessions' table, through the foreign key (no import of the app above; resolved
    at call time, when every app is loaded)."""
    session_model: Any = Event._meta.get_field("session").related_model
    return session_model._default_manager


def _take_seqs(session_id: int, count: int) -> int:
    """Add ``count`` to the session's ``last_seq`` and return the new value, in one statement
    (UPDATE ... RETURNING: the row's write lock and the number in one round trip). Call in a
    transaction; the lock is held until it ends. Http404 when the session is gone."""
    meta = _sessions().model._meta
    quote = connection.ops.quote_name
    table, pk = quote(meta.db_table), quote(meta.pk.column)
    seq, active = (quote(meta.get_field(f).column) for f in ("last_seq", "last_activity_at"))
    # Identifiers come from the model (quoted), values are parameters.
    sql = f"UPDATE {table} SET {seq} = {seq} + %s, {active} = %s WHERE {pk} = %s RETURNING {seq}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [count, timezone.now(), session_id])
        row = cursor.fetchone()
    if row is None:
        raise Http404("No such session.")
    return int(row[0])


def append_event(
    session_id: int,
    type: str,
    payload: dict[str, Any] | None = None,
    *,
    cell: models.Model | int | None = None,
    actor: User | None = None,
) -> Event:
    """Append one event to the session's log and return it.

    ``type`` is a name of ``agentide.events.registry`` and ``payload`` must match its shape
    (raises ``registry.EventInvalid`` otherwise: a programming error). ``seq`` is the
    session's ``last_seq`` + 1, assigned under the session row's write lock (the UPDATE
    takes it on PostgreSQL and SQLite alike), so concurrent writers get contiguous, unique
    numbers in commit order. Runs in the caller's transaction (or its own); after commit
    the event is published to the session's group. Http404 when the session is gone.
    """
    payload = payload or {}
    registry.check(type, payload)
    cell_id = cell.pk if isinstance(cell, models.Model) else cell
    with transaction.atomic():
        seq = _take_seqs(session_id, 1)
        event = Event.objects.create(
            session_id=session_id,
            seq=seq,
            type=type,
            payload=payload,
            cell_id=cell_id,
            actor=actor,
        )
        message = event_message(event, actor=actor)
        transaction.on_commit(lambda: publish(session_id, message))
    return event


def append_events(
    session_id: int, events: list[Event], *, publish_live: bool = True
) -> list[Event]:
    """Append several events at once (an imported transcript, a fork's copied history) and
    return them saved.

    ``events`` are unsaved Events with type, payload, cell and actor set; they get the
    session's next ``len(events)`` seqs in list order, under the same row lock as
    ``append_event``, and are written in batched INSERTs. Raises ``registry.EventInvalid``
    for a type nobody declared (payloads are the caller's to check: an import checks the
    file's, a fork copies what the log already holds). After commit each is published,
    unless ``publish_live`` is False (a session created in this transaction, which nobody
    can be watching yet).
    """
    if not events:
        return []
    for event in events:
        registry.get(event.type)
    with transaction.atomic():
        last = _take_seqs(session_id, len(events))
        for offset, event in enumerate(events):
            event.session_id = session_id
            event.seq = last - len(events) + 1 + offset
        created = Event.objects.bulk_create(events, batch_size=1000)
        if publish_live:
            messages = [event_message(event) for event in created]

            def publish_all() -> None:
                for message in messages:
                    publish(session_id, message)

            transaction.on_commit(publish_all)
    return created


def is_imported_event(payload: dict[str, Any]) -> bool:
    """True for an event that came from an imported transcript."""
    return payload.get(IMPORTED) is True


def event_message(event: Event, *, actor: User | None = None) -> dict[str, Any]:
    """The plain-data form of an event that goes over the channel layer and gets rendered."""
    who = actor if actor is not None else (event.actor if event.actor_id else None)
    imported = is_imported_event(event.payload)
    return {
        "seq": event.seq,
        "type": event.type,
        "payload": event.payload,
        "cell_id": event.cell_id,
        "actor": who.username if who else "",
        "actor_initials": who.initials if who else "",
        "imported": imported,
        "imported_actor": str(event.payload.get(IMPORTED_ACTOR, "")) if imported else "",
        "created_at": event.created_at.isoformat(),
    }


def events_after(
    session_id: int, after_seq: int, *, up_to: int | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Event messages of the session with ``after_seq < seq <= up_to``, in seq order, at
    most ``limit`` of them."""
    events = Event.objects.filter(session_id=session_id, seq__gt=after_seq).select_related("actor")
    if up_to is not None:
        events = events.filter(seq__lte=up_to)
    events = events.order_by("seq")
    if limit is not None:
        events = events[:limit]
    return [event_message(e) for e in events]


def publish(session_id: int, message: dict[str, Any]) -> None:
    """Send one event message to the session's group. Never raises: the log is the truth,
    and a consumer that misses a message catches up from the database."""
    try:
        group_send(session_group(session_id), {"type": "session.event", "event": message})
    except Exception:
        log.warning(
            "publishing event %s of session %s failed", message["seq"], session_id, exc_info=True
        )


def publish_presence(session_id: int) -> None:
    try:
        group_send(session_group(session_id), {"type": "presence.changed"})
    except Exception:
        log.warning("publishing presence of session %s failed", session_id, exc_info=True)


_publisher_lock = threading.Lock()
_publisher: tuple[int, asyncio.AbstractEventLoop, Any] | None = None


def _publisher_for_process() -> tuple[asyncio.AbstractEventLoop, Any]:
    """This process's event loop for channel-layer sends (in a daemon thread) and the layer
    instance it sends with.

    One long-lived loop keeps the layer's Redis connections open between sends; a fresh loop
    per send (``async_to_sync``) reconnected every time, ~3 ms an event. The layer instance is
    the publisher's own, so nothing else closing its connections (a consumer's loop ending)
    touches these. Made anew in a forked child (Celery's prefork pool): threads do not fork.
    """
    global _publisher
    with _publisher_lock:
        if _publisher is None or _publisher[0] != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="publisher", daemon=True)
            thread.start()
            layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
            _publisher = (os.getpid(), loop, layer)
        return _publisher[1], _publisher[2]


def group_send(group: str, message: dict[str, Any]) -> None:
    """Send to a channel-layer group from sync code (also from a thread that runs a loop);
    waits for the send and raises what it raised."""
    if not settings.CHANNEL_LAYERS:
        return
    loop, layer = _publisher_for_process()
    future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
    future.result(timeout=30)
