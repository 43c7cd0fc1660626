"""The event log: gap-free seqs under concurrent writers, publishing after commit."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.http import Http404
from django.test.utils import CaptureQueriesContext

from agentide.events import log as event_log
from agentide.events import registry
from agentide.events.log import append_event, events_after
from agentide.events.models import Event
from agentide.sessions.models import Session


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_get_contiguous_seqs(session):
    writers, per_writer = 8, 25
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_writer):
                append_event(session.pk, registry.ERROR, {"message": f"{n} {i}"})
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    seqs = list(Event.objects.filter(session=session).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, writers * per_writer + 1))
    assert Session.objects.get(pk=session.pk).last_seq == writers * per_writer
    # Each writer's own events keep its order.
    for n in range(writers):
        mine = [
            int(e.payload["message"].split()[1])
            for e in Event.objects.filter(
                session=session, payload__message__startswith=f"{n} "
            ).order_by("seq")
        ]
        assert mine == list(range(per_writer))


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_event_leaves_no_gap(session):
    append_event(session.pk, registry.ERROR, {"message": "1"})
    with pytest.raises(RuntimeError), transaction.atomic():
        append_event(session.pk, registry.ERROR, {"message": "2"})
        raise RuntimeError("roll back")
    append_event(session.pk, registry.ERROR, {"message": "3"})
    assert [(m["seq"], m["payload"]["message"]) for m in events_after(session.pk, 0)] == [
        (1, "1"),
        (2, "3"),
    ]


@pytest.mark.django_db(transaction=True)
def test_events_are_published_only_after_commit(session, monkeypatch):
    published: list[int] = []
    monkeypatch.setattr(event_log, "publish", lambda sid, message: published.append(message["seq"]))
    with transaction.atomic():
        append_event(session.pk, registry.ERROR, {"message": "x"})
        append_event(session.pk, registry.ERROR, {"message": "x"})
        assert published == []
    assert published == [1, 2]


def test_events_after_pages_by_seq(session):
    for i in range(5):
        append_event(session.pk, registry.ERROR, {"message": str(i)})
    assert [m["seq"] for m in events_after(session.pk, 2)] == [3, 4, 5]
    assert [m["seq"] for m in events_after(session.pk, 1, up_to=3)] == [2, 3]


def test_appending_an_event_takes_one_statement_for_its_seq_and_one_for_its_row(session):
    # The seq is taken with UPDATE ... RETURNING (the row lock and the number at once): every
    # event of a streaming cell used to read the session row back after locking it.
    with CaptureQueriesContext(connection) as queries:
        event = append_event(session.pk, registry.ERROR, {"message": "x"})
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 2, statements
    assert event.seq == Session.objects.get(pk=session.pk).last_seq
    with pytest.raises(Http404):
        append_event(session.pk + 1000, registry.ERROR, {"message": "gone"})
