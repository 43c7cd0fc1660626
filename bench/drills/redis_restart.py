"""Drill: restart the (bench's own) Redis while a cell streams to three viewers.

Redis is the Celery broker and the Channels layer, never the source of truth: its restart
(no persistence, so group memberships and queued messages are gone) may delay live events
but must lose none. The viewers behave like the page: they reconnect with their last seq only
when their connection closes. Recovery time: from the stop until every viewer holds every
event of the session again (after the streaming cell ended).
"""

from __future__ import annotations

import asyncio
import time

from bench.drills import DrillResult
from bench.drills.common import Scene, cell_detail
from bench.stack import Fixture, Stack, db, wait_cell_done


def run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    return asyncio.run(_run(stack, fixture, smoke))


def _last_critical(log: str) -> str:
    lines = [line for line in log.splitlines() if "CRITICAL" in line]
    return lines[-1].split("] ", 1)[-1][:160] if lines else "no CRITICAL line in its log"


async def _run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    assert stack.redis is not None and stack.worker is not None
    result = DrillResult("restart Redis mid-stream")
    scene = await Scene.open(stack, fixture, "drill redis restart", viewers=3)
    notes: list[str] = []
    try:
        lines = 60 if smoke else 100
        cell = await scene.stream(lines=lines)
        fault = time.perf_counter()
        stack.redis.stop()
        await asyncio.sleep(1.0)  # Redis is down for a second
        await asyncio.to_thread(stack.start_redis)
        notes.append(f"Redis back after {time.perf_counter() - fault:.1f} s")
        # The worker may not survive losing its broker; a supervisor (compose's restart
        # policy) would start it again, and so does the drill.
        deadline = time.monotonic() + 10
        while stack.worker.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if not stack.worker.alive():
            died = _last_critical(stack.worker.output())
            notes.append(f"FINDING: the worker exited after losing Redis ({died}); restarted "
                         f"by the drill at {time.perf_counter() - fault:.1f} s")
            await asyncio.to_thread(stack.start_worker, **stack.worker_env)
        status = await db(wait_cell_done, cell.pk, 120)
        notes.append(await db(cell_detail, cell.pk))
        done = await scene.caught_up(timeout=30)
        if done is not None:
            result.recover_s = done - fault
        else:
            behind = [c.last_seq for c in scene.clients]
            notes.append(f"viewers stuck at seqs {behind} (no live events after the restart, "
                         "connections still open)")
        notes.append(f"marks seen per viewer {[len(c.marks) for c in scene.clients]} of "
                     f"{lines}; reconnects {scene.reconnects()}")
        _after, after_status = await scene.run("echo after", timeout=60)
        notes.append(f"next cell {after_status}")
        if status != "finished":
            notes.append("FINDING: the streaming cell did not finish")
    finally:
        result.lost, result.duplicates, result.stuck = await scene.close()
    result.notes = "; ".join(notes)
    result.judge()
    return result
