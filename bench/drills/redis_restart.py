"""Drill: restart the (bench's own) Redis while a cell streams to three viewers.

Redis is the Celery broker and the Channels layer, never the source of truth: its restart
(no persistence, so group memberships and queued messages are gone) may delay live events
but must lose none, and the next cell must run. A worker that exits is started again at
once, as compose's restart policy would. The viewers behave like the page: they reconnect
with their last seq only when their connection closes. Recovery time: from the stop until a
cell submitted after the streaming one finished and every viewer holds every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.drills import DrillResult
from bench.drills.common import Scene, cell_detail
from bench.stack import Fixture, Stack, db, wait_cell_done


def run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    return asyncio.run(_run(stack, fixture, smoke))


def _last_critical(log: str) -> str:
    lines = [line for line in log.splitlines() if "CRITICAL" in line]
    return lines[-1].split("] ", 1)[-1][:160] if lines else "no CRITICAL line in its log"


async def _supervise(stack: Stack, fault: float, notes: list[str]) -> None:
    """What compose's restart policy does: start the worker again whenever it exits."""
    assert stack.worker is not None
    while True:
        if not stack.worker.alive():
            died = _last_critical(stack.worker.output())
            notes.append(f"FINDING: the worker exited after losing Redis ({died}) at "
                         f"{time.perf_counter() - fault:.1f} s; restarted as a supervisor would")
            await asyncio.to_thread(stack.start_worker, **stack.worker_env)
        await asyncio.sleep(0.2)


async def _run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    assert stack.redis is not None and stack.worker is not None
    result = DrillResult("restart Redis mid-stream")
    scene = await Scene.open(stack, fixture, "drill redis restart", viewers=3)
    notes: list[str] = []
    supervisor: asyncio.Task[None] | None = None
    try:
        lines = 60 if smoke else 100
        cell = await scene.stream(lines=lines)
        fault = time.perf_counter()
        stack.redis.stop()
        await asyncio.sleep(1.0)  # Redis is down for a second
        await asyncio.to_thread(stack.start_redis)
        notes.append(f"Redis back after {time.perf_counter() - fault:.1f} s")
        supervisor = asyncio.create_task(_supervise(stack, fault, notes))
        status = await db(wait_cell_done, cell.pk, 120)
        notes.append(await db(cell_detail, cell.pk))
        caught = await scene.caught_up(timeout=30)
        if caught is None:
            behind = [c.last_seq for c in scene.clients]
            notes.append(f"viewers stuck at seqs {behind} (no live events after the restart, "
                         "connections still open)")
        notes.append(f"marks seen per viewer {[len(c.marks) for c in scene.clients]} of "
                     f"{lines}; reconnects {scene.reconnects()}")
        _after, after_status = await scene.run("echo after", timeout=120)
        notes.append(f"next cell {after_status}")
        done = await scene.caught_up(timeout=30)
        if caught is not None and done is not None and after_status == "finished":
            result.recover_s = done - fault
        if status != "finished":
            notes.append("FINDING: the streaming cell did not finish")
    finally:
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        result.lost, result.duplicates, result.stuck = await scene.close()
    result.notes = "; ".join(notes)
    result.judge()
    return result
