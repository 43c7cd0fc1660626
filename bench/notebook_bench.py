"""Figures of the live path, measured on the bench stack (``bench/stack.py``).

Each function returns ``report.Row``s; ``bench/run.py`` calls them in order on one stack.
Clocks: round trips use ``time.time()`` at both ends in this process; line latencies compare
the sandbox's ``time.time()`` printed in the line with this process's ``time.time()`` when
the websocket frame arrives (one kernel clock: containers share the host's).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
import uuid
from functools import partial
from typing import Any

from bench.report import Row
from bench.stack import (
    Fixture,
    Stack,
    Viewer,
    db,
    last_seq,
    new_session,
    proc_kib,
    stream_command,
    submit,
    viewer,
    wait_cell_done,
)
from tests.support import wait_until, wait_until_async


def _noop(*args: Any) -> None:
    return None


def first_frame(client: Viewer, start: int, needle: str) -> float | None:
    """Receive time of the first frame from index ``start`` whose HTML contains ``needle``."""
    return next((t for t, html in client.frames[start:] if needle in html), None)


# --- session start ---------------------------------------------------------------------------


def session_start(fixture: Fixture, n: int) -> list[Row]:
    """New session -> its first command ran: cold (container created) and from the warm pool.

    Runs in this process through the sandbox services, as a worker would: ``run_command``
    ensures the sandbox (claim a pool member or create a container), opens the runner and
    runs ``echo ready``.
    """
    from django.conf import settings

    from agentide.quotas.services import sandbox_admission
    from agentide.sandboxes import services as sandboxes

    def first_command(title: str) -> float:
        session = new_session(fixture, title)
        t = time.perf_counter()
        result = sandboxes.run_command(session, "echo ready", command_id=uuid.uuid4().hex,
                                       timeout_s=30, on_output=_noop,
                                       admission=sandbox_admission(session))
        elapsed = time.perf_counter() - t
        assert result.exit_code == 0, result
        sandboxes.destroy_sandbox(session)
        return elapsed * 1000

    cold = [first_command(f"cold {i}") for i in range(n)]
    settings.AGENTIDE_SANDBOX_WARM_POOL_SIZE = n
    try:
        sandboxes.refill_warm_pool()
        warm = [first_command(f"warm {i}") for i in range(n)]
    finally:
        settings.AGENTIDE_SANDBOX_WARM_POOL_SIZE = 0
    return [
        Row("session start -> first command done, cold", samples=cold, target="<= 1 s"),
        Row("session start -> first command done, warm pool", samples=warm, target="<= 60 ms"),
    ]


# --- line latency under concurrency ----------------------------------------------------------


async def prepare_sessions(fixture: Fixture, count: int, title: str) -> list[Any]:
    """``count`` sessions whose sandboxes are running (a first cell ran in each)."""
    sessions = [await db(new_session, fixture, f"{title} {i}") for i in range(count)]
    cells = [await db(submit, fixture, s, "true") for s in sessions]
    for cell in cells:
        await db(wait_cell_done, cell.pk, 180)
    return sessions


async def stream_to_viewers(
    stack: Stack, fixture: Fixture, sessions: list[Any], viewers_per_session: int,
    lines: int, interval_s: float, *, settle: bool = True,
) -> tuple[list[Viewer], float, float]:
    """Connect the viewers, stream ``lines`` marker lines in every session at once, and wait
    until every viewer saw every line. Returns the viewers, the time (s) until all were
    connected, and the time after that until their presence updates settled."""
    clients: list[Viewer] = []
    tasks = []
    for session in sessions:
        seq = await db(last_seq, session.pk)
        for _ in range(viewers_per_session):
            client = viewer(stack, fixture, session.pk, last_seq=seq)
            clients.append(client)
    t = time.perf_counter()
    tasks = [asyncio.create_task(c.follow(deadline_s=300)) for c in clients]
    try:
        await wait_until_async(lambda: all(c.connected.is_set() for c in clients), timeout=120,
                       what="the viewers to connect")
        connect_s = time.perf_counter() - t
        # Every connect makes every viewer re-render presence: unless asked to stream into
        # that, let it settle first (how long it took is reported).
        settle_s = 0.0
        if settle:
            await _settle(clients)
            settle_s = time.perf_counter() - t - connect_s - 1.0
        for tag, session in enumerate(sessions):
            await db(submit, fixture, session, stream_command(tag, lines, interval_s))
        # Bounded: a viewer that falls behind shows up as undelivered lines, not a hang.
        with contextlib.suppress(TimeoutError):
            await wait_until_async(lambda: all(len(c.marks) >= lines for c in clients),
                           timeout=60 + lines * interval_s * 4,
                           what="every line at every viewer", interval=0.1)
    finally:
        for client in clients:
            client.running = False
        await asyncio.gather(*tasks)
    return clients, connect_s, settle_s


async def _settle(clients: list[Viewer]) -> None:
    """Wait until every viewer got a frame and none got one for a second."""
    await wait_until_async(lambda: all(c.last_message for c in clients)
                   and time.monotonic() - max(c.last_message for c in clients) > 1.0,
                   timeout=300, what="presence updates to settle", interval=0.1)


def integrity(clients: list[Viewer], up_to: dict[str, int]) -> tuple[int, int]:
    """(events not received, duplicates) over viewers; ``up_to`` maps a viewer's url to the
    session's last seq."""
    return sum(c.lost(up_to[c.url]) for c in clients), sum(c.duplicates for c in clients)


async def line_latency(
    stack: Stack, fixture: Fixture, levels: list[int], viewers_per_session: int, lines: int,
    interval_s: float,
) -> list[Row]:
    sessions = await prepare_sessions(fixture, max(levels), "stream")
    rows = []
    for level in levels:
        group = sessions[:level]
        clients, _, _ = await stream_to_viewers(stack, fixture, group, viewers_per_session,
                                                lines, interval_s)
        for session in group:
            await db(_wait_session_idle, session.pk)
        samples = [ms * 1000 for c in clients for ms in c.live_marks]
        up_to = {}
        for c in clients:
            up_to[c.url] = await db(last_seq, int(c.url.rstrip("/").rsplit("/", 1)[1]))
        lost, dups = integrity(clients, up_to)
        delivered = sum(len(c.marks) for c in clients)
        target = "p50 <= 50 ms, p99 <= 250 ms" if level == max(levels) else ""
        rows.append(Row(
            f"line latency container -> ws, {level} sessions x {viewers_per_session} viewers",
            samples=samples, target=target,
            note=f"{lines} lines/session every {interval_s * 1000:.0f} ms; delivered "
                 f"{delivered}/{lines * len(clients)}; lost {lost}, dup {dups}",
        ))
    return rows


def _wait_session_idle(session_id: int) -> None:
    from agentide.sessions.models import Cell
    wait_until(lambda: not Cell.objects.filter(
        session_id=session_id, status__in=[Cell.Status.QUEUED, Cell.Status.RUNNING]).exists(),
        timeout=120, what=f"session {session_id} to be idle", interval=0.1)


# --- fan-out ----------------------------------------------------------------------------------


async def fan_out(stack: Stack, fixture: Fixture, joining: int, settled: int, lines: int,
                  interval_s: float) -> list[Row]:
    """One session streaming to many viewers: first to ``joining`` clients while they join
    (the stream starts as soon as all are connected), then to ``settled`` clients once their
    presence updates settled."""
    sessions = await prepare_sessions(fixture, 1, "fan-out")
    rows = []
    for viewers, settle, target in ((joining, False, "p99 <= 1 s"),
                                    (settled, True, "p99 <= 250 ms")):
        clients, connect_s, settle_s = await stream_to_viewers(
            stack, fixture, sessions, viewers, lines, interval_s, settle=settle)
        await db(_wait_session_idle, sessions[0].pk)
        samples = [ms * 1000 for c in clients for ms in c.live_marks]
        seq = await db(last_seq, sessions[0].pk)
        lost, dups = integrity(clients, {c.url: seq for c in clients})
        delivered = sum(len(c.marks) for c in clients)
        when = (f"after presence settled ({settle_s:.1f} s after all connected)" if settle
                else "streaming while they join")
        rows.append(Row(
            f"fan-out: 1 session -> {viewers} viewers, line latency, {when}", samples=samples,
            target=target,
            note=f"{lines} lines every {interval_s * 1000:.0f} ms; delivered "
                 f"{delivered}/{lines * len(clients)} before the viewers closed; all "
                 f"connected in {connect_s:.1f} s; not received {lost}, dup {dups}",
        ))
    return rows


# --- 50 MB flood -----------------------------------------------------------------------------


class RssSampler:
    """Samples the RSS of the web and worker process trees every 50 ms in a thread."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.peak_web = 0
        self.peak_worker_process = 0
        self.peak_worker_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        assert self.stack.daphne is not None and self.stack.worker is not None
        while not self._stop.wait(0.05):
            self.peak_web = max(self.peak_web, proc_kib(self.stack.daphne.pid, "VmRSS"))
            rss = [proc_kib(pid, "VmRSS") for pid in self.stack.worker.tree_pids()]
            self.peak_worker_process = max(self.peak_worker_process, max(rss, default=0))
            self.peak_worker_total = max(self.peak_worker_total, sum(rss))


async def flood(stack: Stack, fixture: Fixture, megabytes: int, repeats: int) -> list[Row]:
    """``megabytes`` MB of output from one cell with one viewer: wall time (submit -> the
    viewer sees the cell finish), peak RSS of web and worker, what the database keeps."""
    from django.db.models import Sum
    from django.db.models.fields.json import KT
    from django.db.models.functions import Length

    from agentide.sessions.models import Cell

    size = megabytes * 1024 * 1024
    sessions = await prepare_sessions(fixture, 1, "flood")
    session = sessions[0]
    walls: list[float] = []
    assert stack.daphne is not None and stack.worker is not None
    web_before = proc_kib(stack.daphne.pid, "VmRSS")
    worker_before = max(proc_kib(p, "VmRSS") for p in stack.worker.tree_pids())
    stored = ""
    with RssSampler(stack) as sampler:
        for _ in range(repeats):
            client = viewer(stack, fixture, session.pk, keep_frames=True,
                            last_seq=await db(last_seq, session.pk))
            follow = asyncio.create_task(client.follow(deadline_s=300))
            try:
                await asyncio.wait_for(client.connected.wait(), timeout=30)
                t0 = time.time()
                cell = await db(submit, fixture, session, f"yes | head -c {size}")
                finished = await wait_until_async(
                    partial(first_frame, client, 0, 'data-status="finished"'),
                    timeout=300, what="the flood cell to finish", interval=0.05)
                walls.append((finished - t0) * 1000)
            finally:
                client.running = False
                await follow

            def stored_sizes(cell_id: int = cell.pk) -> str:
                row = Cell.objects.get(pk=cell_id)
                events = row.events.filter(type="cell.output")
                text = events.annotate(n=Length(KT("payload__text"))).aggregate(total=Sum("n"))
                return (f"command printed {row.output_chars:,} chars; stored: cell.output "
                        f"{len(row.output):,} chars, {events.count()} output events with "
                        f"{text['total'] or 0:,} chars")

            stored = await db(stored_sizes)
    mb = lambda kib: f"{kib / 1024:.0f} MB"  # noqa: E731
    return [
        Row(f"{megabytes} MB output flood, submit -> finished at the viewer", samples=walls,
            note=f"{megabytes * 1024 * 1024 / statistics.median(walls) / 1000:.0f} MB/s"),
        Row("flood: peak RSS web (Daphne)", value=mb(sampler.peak_web), target="< 300 MB",
            note=f"before: {mb(web_before)}"),
        Row("flood: peak RSS worker (largest process)", value=mb(sampler.peak_worker_process),
            target="< 300 MB",
            note=f"before: {mb(worker_before)}; whole prefork tree peak "
                 f"{mb(sampler.peak_worker_total)}"),
        Row("flood: bytes stored", value=stored.split(";")[0], note=stored.split("; ")[1]),
    ]
