"""Who is viewing a session now: one Redis sorted set per session, scored by the moment each
connection's heartbeat expires."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis
from django.conf import settings

from agentide.accounts.models import User

_redis_clients: dict[str, Any] = {}


def redis_client() -> Any:
    """One client (and connection pool) per process and URL: presence calls are frequent."""
    client = _redis_clients.get(settings.REDIS_URL)
    if client is None:
        client = _redis_clients[settings.REDIS_URL] = redis.Redis.from_url(settings.REDIS_URL)
    return client


def _presence_key(session_id: int) -> str:
    return f"{settings.REDIS_PREFIX}:presence:{int(session_id)}"


def presence_touch(session_id: int, user_id: int, connection_id: str) -> None:
    """Record that ``user_id`` is viewing through ``connection_id`` for the next TTL seconds."""
    key = _presence_key(session_id)
    client = redis_client()
    client.zadd(key, {f"{user_id}:{connection_id}": time.time() + settings.NOTEBOOK_PRESENCE_TTL_S})
    client.expire(key, settings.NOTEBOOK_PRESENCE_TTL_S * 2)


def presence_leave(session_id: int, connection_id: str, user_id: int) -> None:
    redis_client().zrem(_presence_key(session_id), f"{user_id}:{connection_id}")


def viewer_ids(session_ids: Iterable[int]) -> dict[int, list[int]]:
    """User ids viewing each session now (live connections with a fresh heartbeat)."""
    client = redis_client()
    now = time.time()
    result: dict[int, list[int]] = {}
    pipe = client.pipeline()
    ids = list(session_ids)
    for sid in ids:
        pipe.zrangebyscore(_presence_key(sid), now, "+inf")
    for sid, members in zip(ids, pipe.execute(), strict=True):
        users: list[int] = []
        for member in members:
            uid = int(member.split(b":", 1)[0])
            if uid not in users:
                users.append(uid)
        result[sid] = users
    return result


def viewers(session_id: int) -> list[User]:
    """The users viewing ``session_id`` now, in a stable order."""
    ids = viewer_ids([session_id])[session_id]
    return list(User.objects.filter(pk__in=ids).order_by("username"))
