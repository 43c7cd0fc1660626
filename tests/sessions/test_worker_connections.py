"""A Celery worker keeps its database connection from one task to the next, like a request
thread does (CONN_MAX_AGE, health checks): a new PostgreSQL connection per cell cost tens of
milliseconds of every round trip."""

from __future__ import annotations

import pytest
from celery import signals
from celery.fixups.django import DjangoWorkerFixup
from django.db import connection

from agentide.celery import app
from agentide.sessions.tasks import run_session_cells


@pytest.mark.django_db(transaction=True)
def test_a_worker_keeps_its_database_connection_from_one_task_to_the_next():
    fixup = DjangoWorkerFixup(app)  # what a worker process runs around each task
    connection.ensure_connection()
    opened = connection.connection
    for _ in range(3):
        for signal, hook in (
            (signals.task_prerun, fixup.on_task_prerun),
            (signals.task_postrun, fixup.on_task_postrun),
        ):
            hook(sender=run_session_cells)
            signal.send(sender=run_session_cells, task_id="t", task=run_session_cells)
    assert connection.connection is opened
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


@pytest.mark.django_db(transaction=True)
def test_a_worker_drops_a_connection_that_is_past_its_age():
    connection.ensure_connection()
    opened = connection.connection
    connection.close_at = 0  # as if CONN_MAX_AGE had passed
    signals.task_prerun.send(sender=run_session_cells, task_id="t", task=run_session_cells)
    assert connection.connection is None or connection.connection is not opened
