"""Settings come from the environment; bad values fail loudly, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from agentide.lib.env import database_from_url, env_bool, env_int, env_list

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "AGENTIDE_"))}
    base.pop("DATABASE_URL", None)
    base.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_postgres_urls_are_parsed():
    db = database_from_url(
        "DATABASE_URL",
        "postgres://u:p%40ss@db.internal:6543/agentide?sslmode=require",
        sqlite_default=Path("/x.db"),
    )
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "agentide",
        "u",
        "p@ss",
        "db.internal",
        "6543",
    )
    assert db["OPTIONS"] == {"sslmode": "require"}
    assert db["CONN_MAX_AGE"] == 60


def test_a_pool_size_gives_postgres_a_pool_instead_of_persistent_connections():
    db = database_from_url(
        "DATABASE_URL", "postgres://u:p@db:5432/agentide", sqlite_default=Path("/x.db"), pool_size=8
    )
    assert db["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 8, "timeout": 10}
    # Django refuses persistent connections with a pool; checks run as connections are taken.
    assert (db["CONN_MAX_AGE"], db["CONN_HEALTH_CHECKS"]) == (0, True)
    sqlite = database_from_url("DATABASE_URL", "", sqlite_default=Path("/x.db"), pool_size=8)
    assert "pool" not in sqlite["OPTIONS"]


def test_the_default_database_is_sqlite_in_wal_mode(tmp_path):
    db = database_from_url("DATABASE_URL", "", sqlite_default=tmp_path / "a.sqlite3")
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert "journal_mode=WAL" in db["OPTIONS"]["init_command"]


@pytest.mark.parametrize(
    "url", ["mysql://u@h/db", "postgres://u@h:notaport/db", "postgres://u@h/", "nonsense"]
)
def test_bad_database_urls_name_the_variable(url):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_from_url("DATABASE_URL", url, sqlite_default=Path("/x.db"))


def test_typed_readers_name_the_variable_on_bad_values():
    with pytest.raises(ImproperlyConfigured, match="WORKERS='many' is not an integer"):
        env_int("WORKERS", 1, environ={"WORKERS": "many"})
    with pytest.raises(ImproperlyConfigured, match="WORKERS=0 is below the minimum 1"):
        env_int("WORKERS", 1, minimum=1, environ={"WORKERS": "0"})
    with pytest.raises(ImproperlyConfigured, match="FLAG='maybe' is not a boolean"):
        env_bool("FLAG", False, environ={"FLAG": "maybe"})
    assert env_bool("FLAG", False, environ={"FLAG": "Yes"}) is True
    assert env_list("HOSTS", [], environ={"HOSTS": "a.example, ,b.example"}) == [
        "a.example",
        "b.example",
    ]


def test_a_bad_database_url_stops_django_with_the_variable_named():
    result = manage("check", DATABASE_URL="mysql://nope/db")
    assert result.returncode != 0
    assert "DATABASE_URL='mysql://nope/db': unsupported scheme" in result.stderr


def test_a_bad_redis_url_stops_django_with_the_variable_named():
    result = manage("check", REDIS_URL="http://localhost:6379")
    assert result.returncode != 0
    assert "REDIS_URL='http://localhost:6379' must start with redis://" in result.stderr


def test_an_unreachable_redis_is_reported_by_preflight(tmp_path):
    # Port 9 on loopback: nothing listens there, so the connection is refused at once.
    result = manage("preflight", REDIS_URL="redis://127.0.0.1:9/0", AGENTIDE_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "REDIS_URL=redis://127.0.0.1:9/0: Redis is unreachable" in result.stderr


def test_production_requires_a_secret_key_and_allowed_hosts():
    result = manage("check", AGENTIDE_PROFILE="production")
    assert "DJANGO_SECRET_KEY must be set" in result.stderr
    result = manage(
        "check", AGENTIDE_PROFILE="production", DJANGO_SECRET_KEY="k" * 60 + "-unique-chars-0123"
    )
    assert "DJANGO_ALLOWED_HOSTS must list the host names" in result.stderr


def test_check_deploy_is_clean_under_the_production_profile(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        AGENTIDE_PROFILE="production",
        DJANGO_SECRET_KEY="s3cr3t-" + "".join(chr(65 + i % 26) + str(i) for i in range(40)),
        DJANGO_ALLOWED_HOSTS="ide.example.com",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://ide.example.com",
        AGENTIDE_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
