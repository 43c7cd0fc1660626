"""Event moved from the sessions app to the event log app without touching its table: a
database migrated under the old layout keeps its rows and reads them through the new model."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from agentide.events.models import Event

OLD = [("events", None), ("notebook", "0003_session_imported")]


@pytest.mark.django_db(transaction=True)
def test_events_written_before_the_move_are_read_after_it(session: Any) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(OLD)
    old_apps = executor.loader.project_state(OLD[1:]).apps
    OldEvent = old_apps.get_model("notebook", "Event")
    OldEvent.objects.create(
        session_id=session.pk, seq=1, type="error", payload={"message": "before the move"}
    )

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    event = Event.objects.get(session=session, seq=1)
    assert event.payload == {"message": "before the move"}
    assert Event._meta.db_table == "notebook_event"
    assert list(session.events.values_list("seq", flat=True)) == [1]
