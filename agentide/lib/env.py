"""Typed readers for configuration taken from environment variables.

Every reader names the variable in its error, so a bad deployment says exactly
what to fix instead of failing somewhere deep inside Django.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str = "", *, environ: Mapping[str, str] | None = None) -> str:
    """Return the variable as a string, or ``default`` when unset."""
    value = _raw(name, environ)
    return default if value is None else value


def env_required(name: str, *, environ: Mapping[str, str] | None = None, why: str = "") -> str:
    """Return the variable; raise ImproperlyConfigured naming it when unset or blank."""
    value = _raw(name, environ)
    if not value:
        raise ImproperlyConfigured(f"{name} must be set{': ' + why if why else ''}.")
    return value


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    """Return a boolean from 1/0, true/false, yes/no, on/off (case-insensitive)."""
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no).")


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Return an integer within [minimum, maximum]; raise naming the variable otherwise."""
    value = _raw(name, environ)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum {minimum}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum {maximum}.")
    return number


def env_float(
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> float:
    """Return a float no smaller than ``minimum``; raise naming the variable otherwise."""
    value = _raw(name, environ)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum {minimum}.")
    return number


def env_list(
    name: str, default: list[str], *, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Return a comma-separated list with blanks dropped."""
    value = _raw(name, environ)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


Prices = tuple[Decimal, Decimal, Decimal]


def env_prices(
    name: str, default: str, *, environ: Mapping[str, str] | None = None
) -> dict[str, Prices]:
    """A price table: ``model=input/cached_input/output,...`` in dollars per million tokens,
    with a ``*`` entry for every other model (required)."""
    value = _raw(name, environ)
    table: dict[str, Prices] = {}
    for entry in (default if value is None or value == "" else value).split(","):
        if not entry.strip():
            continue
        model, _, numbers = entry.partition("=")
        parts = numbers.split("/")
        try:
            prices = tuple(Decimal(p.strip()) for p in parts)
        except InvalidOperation:
            prices = ()
        if not model.strip() or len(prices) != 3 or any(not p.is_finite() or p < 0 for p in prices):
            raise ImproperlyConfigured(
                f"{name}: {entry.strip()!r} is not model=input/cached_input/output "
                "(dollars per million tokens, e.g. gpt-5.1=1.25/0.125/10)."
            )
        table[model.strip()] = (prices[0], prices[1], prices[2])
    if "*" not in table:
        raise ImproperlyConfigured(f"{name} needs a *=input/cached_input/output default entry.")
    return table


def local_secret(path: Path) -> str:
    """The secret kept in ``path`` (mode 0600), generated there on first use.

    Safe when several processes start at once: the file appears whole (written aside, then
    linked into place) and the first one wins.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, draft = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(64) + "\n")
        with contextlib.suppress(FileExistsError):  # another process was first
            os.link(draft, path)
    finally:
        os.unlink(draft)
    return path.read_text().strip()


def database_from_url(
    name: str, url: str, *, sqlite_default: Path, pool_size: int = 0
) -> dict[str, Any]:
    """Translate ``sqlite:///path`` or ``postgres://user:pass@host:port/db`` to a DATABASES entry.

    ``pool_size`` > 0 gives PostgreSQL a connection pool of that size instead of persistent
    connections: under ASGI every request runs in a thread of its own, so a per-thread
    persistent connection is never reused and each request paid for a new connection.

    Raises ImproperlyConfigured naming the variable for unknown schemes or missing parts.
    """
    if not url:
        return _sqlite(sqlite_default)
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        if path.startswith("//"):
            path = path[1:]
        if not path or path == "/":
            raise ImproperlyConfigured(
                f"{name}={url!r} has no SQLite file path (sqlite:////abs/path)."
            )
        return _sqlite(Path(path))
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname:
            raise ImproperlyConfigured(f"{name}={_redact(url)!r} names no database.")
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured(f"{name}={_redact(url)!r} has an invalid port.") from None
        options: dict[str, Any] = dict(parse_qsl(parts.query))
        if pool_size:
            # CONN_HEALTH_CHECKS makes Django check each connection taken from the pool, so a
            # restarted server costs no failed request.
            options["pool"] = {"min_size": 1, "max_size": pool_size, "timeout": 10}
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": dbname,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": unquote(parts.hostname or ""),
            "PORT": str(port or ""),
            # A pooled connection goes back to the pool at the end of each request.
            "CONN_MAX_AGE": 0 if pool_size else 60,
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
        }
    raise ImproperlyConfigured(
        f"{name}={_redact(url)!r}: unsupported scheme {parts.scheme!r} "
        "(use postgres://user:password@host:port/dbname or sqlite:////absolute/path.db)."
    )


def _sqlite(path: Path) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        # WAL lets the web process read while a worker writes; IMMEDIATE transactions take the
        # write lock up front so concurrent writers queue on busy_timeout instead of failing
        # with "database is locked" when upgrading a read lock.
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
            ),
        },
    }


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
