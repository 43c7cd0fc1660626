"""Drill: ``docker kill`` the session's sandbox in the middle of a command.

Expected: the cell ends (failed, with a readable error) instead of staying ``running``; the
output streamed before the kill is kept; the first cell after the kill restarts the
container (workspace kept) and runs (if it fails, up to two more are tried and the failure
is reported). Recovery time: from the kill to the first later cell's ``finished``.
"""

from __future__ import annotations

import asyncio
import time

from bench.drills import DrillResult
from bench.drills.common import Scene, cell_detail, read_back
from bench.stack import Fixture, Stack, db, wait_cell_done


def run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    return asyncio.run(_run(stack, fixture, smoke))


def _kill_container(session_id: int) -> None:
    import docker

    from agentide.sandboxes.models import Sandbox

    container = Sandbox.objects.get(session_id=session_id).container_id
    docker.from_env().api.kill(container)


async def _run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    result = DrillResult("docker kill the sandbox mid-command")
    scene = await Scene.open(stack, fixture, "drill sandbox kill", viewers=3)
    notes: list[str] = []
    first_ok = False
    try:
        await scene.run("echo kept > /workspace/kept")
        for _ in range(6):  # several worker processes now hold idle runner connections
            await scene.run("true")
        cell = await scene.stream(lines=600)
        fault = time.perf_counter()
        await db(_kill_container, scene.session.pk)
        status = await db(wait_cell_done, cell.pk, 60)
        notes.append(f"{await db(cell_detail, cell.pk)} after {time.perf_counter() - fault:.1f} s")
        first_ok = await read_back(scene, fault, notes)
        if scene.recovered_at is not None:
            result.recover_s = scene.recovered_at - fault
        if status == "running":
            notes.append("FINDING: the cell stayed running")
        await scene.caught_up(timeout=30)
    finally:
        result.lost, result.duplicates, result.stuck = await scene.close()
    result.notes = "; ".join(notes)
    result.judge()
    result.ok = result.ok and first_ok  # the first cell after the fault must run
    return result
