"""Drill: restart Daphne while 20 websocket clients follow a streaming cell.

The clients reconnect (every 0.2 s until it answers) with the last seq they applied; the
consumer replays what they missed, then goes live. Recovery time: from the stop until every
client holds every event committed so far, read after Daphne answered again.
"""

from __future__ import annotations

import asyncio
import time

from bench.drills import DrillResult
from bench.drills.common import Scene, cell_detail
from bench.stack import Fixture, Stack, db, last_seq, wait_cell_done


def run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    return asyncio.run(_run(stack, fixture, smoke))


async def _run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    assert stack.daphne is not None
    result = DrillResult("restart Daphne with 20 clients connected")
    scene = await Scene.open(stack, fixture, "drill daphne restart", viewers=20)
    notes: list[str] = []
    try:
        cell = await scene.stream(lines=60 if smoke else 150)
        fault = time.perf_counter()
        stack.daphne.stop()
        await asyncio.to_thread(stack.start_daphne)
        notes.append(f"Daphne listening again after {time.perf_counter() - fault:.1f} s")
        target = await db(last_seq, scene.session.pk)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(c.connects >= 2 and c.last_seq >= target for c in scene.clients):
                result.recover_s = time.perf_counter() - fault
                break
            await asyncio.sleep(0.05)
        await db(wait_cell_done, cell.pk, 120)
        notes.append(await db(cell_detail, cell.pk))
        if await scene.caught_up(timeout=30) is None:
            notes.append("viewers did not catch up with the end of the stream")
        notes.append(f"reconnects {scene.reconnects()}")
    finally:
        result.lost, result.duplicates, result.stuck = await scene.close()
    result.notes = "; ".join(notes)
    result.judge()
    return result
