"""The web process keeps its PostgreSQL connections in a pool.

Under ASGI each request runs in a thread of its own, so Django's persistent connections are
never reused there: without a pool every request opened a new connection (about 12 ms here).
"""

from __future__ import annotations

from typing import Any

import requests
from django.db import connection

from tests.support import (
    ARTIFACTS,
    child_env,
    free_port,
    session_id_for,
    start_daphne,
    test_database_url,
)


def _daphne_backends(application_name: str) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        )
        return {pid for (pid,) in cursor.fetchall()}


def test_daphne_serves_requests_from_a_few_pooled_connections(
    transactional_db: None, personas: Any
) -> None:
    name = f"pooltest{free_port()}"
    port = free_port()
    url = f"{test_database_url()}?application_name={name}"
    process = start_daphne(
        port, child_env(database_url=url), log=ARTIFACTS / f"daphne-pool-{port}.log"
    )
    try:
        cookies = {"sessionid": session_id_for(personas.owner)}
        seen: set[int] = set()
        for _ in range(30):
            page = requests.get(f"http://127.0.0.1:{port}/", cookies=cookies, timeout=30)
            assert page.status_code == 200, page.text[:500]
            alive = _daphne_backends(name)
            assert alive, "the pool keeps a connection open between requests"
            seen |= alive
        assert len(seen) <= 4, f"30 requests used {len(seen)} database connections"
    finally:
        process.stop()
