"""Shell cells end to end: a real Celery worker, the real Redis layer, Docker sandboxes."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from agentide.events import registry
from agentide.events.models import Event
from agentide.sessions import execution
from agentide.sessions.models import Cell
from tests.support import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def destroy_sandboxes() -> Iterator[None]:
    """Remove the containers that the tests' sessions got."""
    yield
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions.models import Session

    for session in Session.objects.all():
        sandboxes.destroy_sandbox(session)


def submit(personas: Any, session: Any, source: str) -> Cell:
    return execution.submit_cell(personas.membership(personas.member), session, "shell", source)


def finished(cell: Cell, timeout: float = 60) -> Cell:
    def done() -> Cell | None:
        cell.refresh_from_db()
        return cell if cell.is_done else None

    return wait_until(done, timeout=timeout, what=f"cell {cell.pk} to finish")


def output_events(cell: Cell) -> list[Event]:
    return list(Event.objects.filter(cell=cell, type=registry.CELL_OUTPUT).order_by("seq"))


def test_a_shell_cells_output_streams_as_events(personas, session, celery_worker):
    cell = submit(personas, session, "for i in 1 2 3; do echo $i; sleep 0.3; done; echo err >&2")
    # The first line is an event before the command ends.
    wait_until(lambda: output_events(cell), timeout=60, what="the first output event")
    cell.refresh_from_db()
    assert cell.status == Cell.Status.RUNNING
    cell = finished(cell)
    assert cell.status == Cell.Status.FINISHED and cell.exit_code == 0
    events = output_events(cell)
    assert len(events) >= 3  # coalesced per ~40 ms, so one per line here
    assert "".join(e.payload["text"] for e in events) == "1\n2\n3\nerr\n"
    assert cell.output == "1\n2\n3\nerr\n" and cell.output_chars == 10
    assert cell.duration_ms is not None and cell.duration_ms >= 900
    seqs = list(Event.objects.filter(session=session).values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_cells_run_one_at_a_time_in_order(personas, session, celery_worker):
    cells = [
        submit(personas, session, "echo a > /workspace/order; sleep 0.5"),
        submit(personas, session, "echo b >> /workspace/order; false"),
        submit(personas, session, "cat /workspace/order"),
    ]
    last = finished(cells[-1])
    assert last.output == "a\nb\n"
    for cell in cells:
        cell.refresh_from_db()
    assert [c.status for c in cells] == ["finished", "failed", "finished"]
    assert cells[1].exit_code == 1
    # Never two running at once: each start follows the previous finish.
    lifecycle = [
        (e.type, e.cell_id)
        for e in Event.objects.filter(session=session, type__in=["cell.started", "cell.finished"])
    ]
    assert lifecycle == [(kind, c.pk) for c in cells for kind in ("cell.started", "cell.finished")]


def test_cancelling_a_running_sleep(personas, session, celery_worker):
    cell = submit(personas, session, "echo started; sleep 100")
    wait_until(lambda: output_events(cell), timeout=60, what="the command to start")
    execution.cancel_cell(personas.membership(personas.owner), session, cell.pk)
    cell = finished(cell, timeout=20)
    assert cell.status == Cell.Status.CANCELLED
    assert cell.duration_ms is not None and cell.duration_ms < 60_000
    # The session carries on with the next cell.
    after = finished(submit(personas, session, "echo after"))
    assert after.output == "after\n"


def test_a_cell_sent_while_the_sandbox_starts_waits_for_it(personas, session, celery_worker):
    first = submit(personas, session, "echo one")
    second = submit(personas, session, "echo two")
    assert finished(first).output == "one\n"
    assert finished(second).output == "two\n"
    states = [
        e.payload["state"] for e in Event.objects.filter(session=session, type="sandbox.state")
    ]
    # The first command announced the start and the sandbox service its running state.
    assert states[0] == "starting" and "running" in states


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its direct children (the worker's prefork pool)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


@pytest.fixture
def short_lease_worker(monkeypatch, settings, request):
    monkeypatch.setenv("AGENTIDE_CELL_LEASE_S", "3")
    settings.NOTEBOOK_LEASE_S = 3
    return request.getfixturevalue("celery_worker")


def test_a_killed_worker_leaves_the_cell_interrupted(personas, session, short_lease_worker):
    cell = submit(personas, session, "echo working; sleep 100")
    wait_until(lambda: output_events(cell), timeout=60, what="the command to start")
    _kill_tree(short_lease_worker.proc.pid)
    short_lease_worker.proc.wait()
    wait_until(lambda: execution.expire_stale_cells(), timeout=20, what="the lease to expire")
    cell.refresh_from_db()
    assert cell.status == Cell.Status.INTERRUPTED
    assert "lease expired" in cell.error
    assert cell.output == "working\n"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_killed_pool_process_s_cell_expires_and_the_queue_goes_on(
    personas, session, short_lease_worker
):
    cell = submit(personas, session, "echo working; sleep 100")
    after = submit(personas, session, "echo after")
    wait_until(lambda: output_events(cell), timeout=60, what="the command to start")
    # The worker's pool processes die mid-cell (OOM killer, a crash); the worker itself lives
    # on, gets its task back and finds the cell still leased.
    for child in _children(short_lease_worker.proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    # What the beat does every few seconds: the lease is not renewed any more, so it expires.
    wait_until(lambda: execution.expire_stale_cells(), timeout=30, what="the lease to expire")
    cell.refresh_from_db()
    assert cell.status == Cell.Status.INTERRUPTED and "lease expired" in cell.error
    assert cell.output == "working\n"
    # The expiry woke the session's scheduler: the next cell runs.
    assert finished(after).output == "after\n"


def test_racing_schedulers_run_each_cell_once_in_order(personas, session, no_tasks):
    cells = [submit(personas, session, f"echo {i}") for i in range(6)]
    start = threading.Barrier(3)
    counts: list[int] = []

    def drain() -> None:
        try:
            start.wait()
            name = threading.current_thread().name
            counts.append(execution.run_queued_cells(session.pk, worker=name))
        finally:
            connection.close()

    threads = [threading.Thread(target=drain, name=f"scheduler-{i}") for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sum(counts) == len(cells)
    started = Event.objects.filter(session=session, type=registry.CELL_STARTED)
    ended = Event.objects.filter(session=session, type=registry.CELL_FINISHED)
    in_order = [c.pk for c in cells]
    assert list(started.order_by("seq").values_list("cell_id", flat=True)) == in_order
    assert list(ended.order_by("seq").values_list("cell_id", flat=True)) == in_order
    for i, cell in enumerate(cells):
        cell.refresh_from_db()
        assert cell.status == Cell.Status.FINISHED and cell.output == f"{i}\n"


def test_the_file_panel_browses_downloads_and_uploads(client, personas, session, celery_worker):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.urls import reverse

    made = finished(submit(personas, session, "mkdir -p sub && echo hi > sub/f.txt"))
    assert made.exit_code == 0, made.error
    files = reverse("session_files", args=[session.pk])
    client.force_login(personas.reviewer)
    assert "sub/" in client.get(files).content.decode()
    assert "f.txt" in client.get(files, {"path": "sub"}).content.decode()
    download = client.get(reverse("file_download", args=[session.pk]), {"path": "sub/f.txt"})
    assert download.status_code == 200 and b"".join(download.streaming_content) == b"hi\n"
    assert download["Content-Disposition"] == 'attachment; filename="f.txt"'
    # Paths cannot leave /workspace: ../ is normalised away, and /etc/passwd is not there.
    escape = client.get(reverse("file_download", args=[session.pk]), {"path": "../../etc/passwd"})
    assert escape.status_code == 404
    upload = reverse("file_upload", args=[session.pk])
    refused = client.post(upload, {"path": "sub", "file": SimpleUploadedFile("up.txt", b"x")})
    assert refused.status_code == 403
    client.force_login(personas.member)
    response = client.post(upload, {"path": "sub", "file": SimpleUploadedFile("up.txt", b"data")})
    assert response.status_code == 200 and "up.txt" in response.content.decode()
    assert finished(submit(personas, session, "cat sub/up.txt")).output == "data"


def test_big_output_is_coalesced_and_capped_head_and_tail(
    personas, session, celery_worker, settings
):
    # 2 MB of numbered 100-character lines.
    cell = finished(submit(personas, session, "seq -f '%099g' 1 20000"))
    assert cell.status == Cell.Status.FINISHED
    total = 20000 * 100
    assert cell.output_chars == total and cell.output_truncated
    head, tail = settings.NOTEBOOK_OUTPUT_HEAD_CHARS, settings.NOTEBOOK_OUTPUT_TAIL_CHARS
    assert cell.output.startswith("0" * 98 + "1\n")
    assert cell.output.endswith("0" * 94 + "20000\n")
    assert f"[... {total - head - tail} characters omitted ...]" in cell.output
    events = output_events(cell)
    # Coalesced: chunks of at most FLUSH_CHARS, so a few dozen events rather than thousands.
    live = [e for e in events if not e.payload.get("tail")]
    assert all(len(e.payload["text"]) <= settings.NOTEBOOK_OUTPUT_FLUSH_CHARS for e in live)
    assert sum(len(e.payload["text"]) for e in live) == head
    assert len(events) < 2 * head // settings.NOTEBOOK_OUTPUT_FLUSH_CHARS + 10
    [end] = [e for e in events if e.payload.get("tail")]
    assert end.payload["text"].endswith("0" * 94 + "20000\n")
    # The events replay to exactly the stored copy.
    assert "".join(e.payload["text"] for e in events) == cell.output
