"""Who calls ``/v1/``: the bearer key, and the membership it acts as.

A key is ``aide-<prefix>-<secret>``. The prefix finds the row; the sha256 of the whole key is
compared in constant time. The API acts as the member who created the key, so quotas and
per-member limits apply exactly as in the browser.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from agentide.accounts.models import Membership, User
from agentide.api import errors
from agentide.api.models import ApiKey
from agentide.projects.models import Project
from agentide.sessions.presence import redis_client

KEY_START = "aide-"
# A key's last use is written at most this often: one write per request would cost more
# than the answer it dates.
LAST_USED_EVERY = dt.timedelta(minutes=1)

BAD_KEY = (
    "Incorrect API key provided. Create a key in your team's settings and send it as "
    "'Authorization: Bearer <key>'."
)


@dataclass(frozen=True)
class ApiCaller:
    """The authenticated caller of one request."""

    key: ApiKey
    membership: Membership
    project: Project
    user: User


class ApiRequest(HttpRequest):
    """What a ``/v1/`` view receives: ``api_view`` has put the caller on it."""

    api: ApiCaller


def new_secret() -> tuple[str, str, str]:
    """Return ``(key, prefix, digest)`` for a new key: 256 random bits after its prefix."""
    prefix = secrets.token_hex(6)
    key = f"{KEY_START}{prefix}-{secrets.token_urlsafe(32)}"
    return key, prefix, key_digest(key)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_key(header: str) -> str:
    """The key in an ``Authorization`` header value, or "" when there is none."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return value.strip()


def find_key(key: str) -> ApiKey:
    """Return the live key row for ``key``; ApiError 401 for unknown, malformed or revoked."""
    if not key.startswith(KEY_START) or len(key) > 200:
        raise errors.ApiError(401, BAD_KEY, code="invalid_api_key")
    prefix, _, _secret = key[len(KEY_START):].partition("-")
    row = (
        ApiKey.objects.select_related("team", "project", "project__team", "created_by")
        .filter(prefix=prefix)
        .first()
    )
    # Compared even when no row matched, so timing does not tell which prefixes exist.
    stored = row.digest if row is not None else "0" * 64
    if not hmac.compare_digest(stored, key_digest(key)) or row is None:
        raise errors.ApiError(401, BAD_KEY, code="invalid_api_key")
    if row.is_revoked:
        raise errors.ApiError(401, "This API key has been revoked.", code="invalid_api_key")
    return row


def check_rate(key: ApiKey) -> None:
    """Count one request against the key's per-minute limit (``AGENTIDE_API_RATE_PER_MINUTE``,
    0 = no limit); ApiError 429 with ``Retry-After`` past it. One Redis counter per key and
    minute, so every web process shares it."""
    limit = settings.AGENTIDE_API_RATE_PER_MINUTE
    if not limit:
        return
    now = time.time()
    window = int(now // 60)
    name = f"{settings.REDIS_PREFIX}:api-rate:{key.pk}:{window}"
    client = redis_client()
    pipe = client.pipeline()
    pipe.incr(name)
    pipe.expire(name, 120)
    count = pipe.execute()[0]
    if count > limit:
        retry = max(1, int((window + 1) * 60 - now) + 1)
        raise errors.ApiError(
            429,
            f"Rate limit reached for this API key: at most {limit} requests per minute. "
            f"Try again in {retry} s.",
            type="rate_limit_exceeded",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry)},
        )


def mark_used(key: ApiKey) -> None:
    """Record the key's use, at most once per ``LAST_USED_EVERY``."""
    now = timezone.now()
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_EVERY:
        return
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    key.last_used_at = now


def authenticate(request: HttpRequest) -> ApiCaller:
    """Return the caller of ``request`` (its ``Authorization: Bearer`` header).

    ApiError 401 for a missing, unknown or revoked key; 403 when the key's creator is no
    longer a member who may write in the key's team; 429 past the key's rate limit.
    """
    key = bearer_key(request.headers.get("Authorization", ""))
    if not key:
        raise errors.ApiError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            code="missing_api_key",
        )
    row = find_key(key)
    membership = (
        Membership.objects.select_related("team", "user")
        .filter(team=row.team_id, user=row.created_by_id, user__is_active=True)
        .first()
    )
    if membership is None or not membership.can_write:
        raise errors.ApiError(
            403,
            "The member who created this API key can no longer write in the team: "
            "ask an owner or admin for a new key.",
            type="permission_error",
            code="key_creator_not_allowed",
        )
    check_rate(row)
    mark_used(row)
    return ApiCaller(key=row, membership=membership, project=row.project, user=membership.user)
