"""Drill: ``docker kill`` the session's sandbox in the middle of a command.

Expected: the cell ends (failed, with a readable error) instead of staying ``running``; the
output streamed before the kill is kept; the next cell restarts the container (workspace
kept) and runs. Recovery time: from the kill to the next cell's ``finished``.
"""

from __future__ import annotations

import asyncio
import time

from bench.drills import DrillResult
from bench.drills.common import Scene, cell_detail
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
    try:
        await scene.run("echo kept > /workspace/kept")
        cell = await scene.stream(lines=600)
        fault = time.perf_counter()
        await db(_kill_container, scene.session.pk)
        status = await db(wait_cell_done, cell.pk, 60)
        notes.append(f"{await db(cell_detail, cell.pk)} after {time.perf_counter() - fault:.1f} s")
        after, after_status = await scene.run("cat /workspace/kept", timeout=120)
        if after_status == "finished":
            result.recover_s = time.perf_counter() - fault
        notes.append(f"next cell {after_status}")
        output = await db(lambda: type(after).objects.get(pk=after.pk).output)
        notes.append(f"workspace kept: {output.strip() == 'kept'}")
        if status == "running":
            notes.append("FINDING: the cell stayed running")
        await scene.caught_up(timeout=30)
    finally:
        result.lost, result.duplicates, result.stuck = await scene.close()
    result.notes = "; ".join(notes)
    result.judge()
    return result
