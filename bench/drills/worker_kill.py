"""Drill: ``kill -9`` the Celery worker (its whole prefork group) in the middle of a command.

A supervisor (compose's ``restart:``) starts a new worker; the drill does the same at once.
Expected: the cell ends ``interrupted`` when its lease expires (beat's expire task, run by
the new worker), never stays ``running``; the output streamed before the kill is kept and
every viewer has every event; the command left in the sandbox is killed; the next cell runs.
Recovery time: from the kill to the cell's ``interrupted`` event at every viewer.
"""

from __future__ import annotations

import asyncio
import time

from bench.drills import DrillResult
from bench.drills.common import Scene, cell_detail
from bench.stack import Fixture, Stack, db, wait_cell_done


def run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    return asyncio.run(_run(stack, fixture, smoke))


def _leftover_processes(session_id: int) -> int:
    """Processes of the streaming command still alive in the session's container."""
    import docker

    from agentide.sandboxes.models import Sandbox

    container = Sandbox.objects.get(session_id=session_id).container_id
    top = docker.from_env().api.top(container, ps_args="-eo pid,args")
    return sum(1 for row in top.get("Processes") or [] if "M0_" in " ".join(row))


async def _run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    assert stack.worker is not None
    result = DrillResult("kill -9 the worker mid-command")
    scene = await Scene.open(stack, fixture, "drill worker kill", viewers=3)
    notes: list[str] = []
    try:
        cell = await scene.stream(lines=600)
        fault = time.perf_counter()
        stack.worker.kill9()
        await asyncio.to_thread(stack.start_worker, **stack.worker_env)
        notes.append(f"worker back in {time.perf_counter() - fault:.1f} s")
        status = await db(wait_cell_done, cell.pk, stack.lease_s + 60)
        done = await scene.caught_up(timeout=30)
        if status == "interrupted" and done is not None:
            result.recover_s = done - fault
        notes.append(await db(cell_detail, cell.pk))
        await asyncio.sleep(1.0)  # the kill of the leftover command is asked on expiry
        left = await db(_leftover_processes, scene.session.pk)
        notes.append(f"leftover command processes in the sandbox: {left}")
        _after, after_status = await scene.run("echo after")
        notes.append(f"next cell {after_status}")
        if left:
            notes.append("FINDING: the interrupted command still runs in the sandbox")
    finally:
        result.lost, result.duplicates, result.stuck = await scene.close()
    result.notes = "; ".join(notes)
    result.judge()
    return result
