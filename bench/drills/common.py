"""What every drill does around its fault: a session streaming to viewers, then the checks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from bench.stack import (
    Fixture,
    Stack,
    Viewer,
    db,
    last_seq,
    new_session,
    stream_command,
    stuck_cells,
    submit,
    viewer,
    wait_cell_done,
)
from tests.support import wait_until_async


@dataclass
class Scene:
    """One session with a running sandbox, ``viewers`` websocket clients following it, and a
    long streaming cell once ``stream`` is called."""

    stack: Stack
    fixture: Fixture
    session: Any
    clients: list[Viewer] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    cells: list[Any] = field(default_factory=list)
    recovered_at: float | None = None  # perf_counter() when a cell after the fault finished

    @classmethod
    async def open(cls, stack: Stack, fixture: Fixture, title: str, viewers: int) -> Scene:
        session = await db(new_session, fixture, title)
        first = await db(submit, fixture, session, "true")
        status = await db(wait_cell_done, first.pk, 180)
        assert status == "finished", status
        seq = await db(last_seq, session.pk)
        scene = cls(stack, fixture, session, cells=[first])
        scene.clients = [viewer(stack, fixture, session.pk, last_seq=seq)
                         for _ in range(viewers)]
        scene.tasks = [asyncio.create_task(c.follow(deadline_s=600)) for c in scene.clients]
        await wait_until_async(lambda: all(c.connected.is_set() for c in scene.clients), timeout=60,
                       what="the viewers to connect")
        return scene

    async def stream(self, lines: int, interval_s: float = 0.1) -> Any:
        """Start a streaming cell and return it once every viewer saw 10 of its lines."""
        cell = await db(submit, self.fixture, self.session,
                        stream_command(0, lines, interval_s))
        self.cells.append(cell)
        await wait_until_async(lambda: all(len(c.marks) >= 10 for c in self.clients), timeout=120,
                       what="10 streamed lines at every viewer")
        return cell

    async def run(self, source: str, timeout: float = 120) -> tuple[Any, str]:
        cell = await db(submit, self.fixture, self.session, source)
        self.cells.append(cell)
        return cell, await db(wait_cell_done, cell.pk, timeout)

    async def caught_up(self, timeout: float) -> float | None:
        """Wait until every viewer holds every event of the session (the session's last seq
        read again after each look); return when (perf_counter), None on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seq = await db(last_seq, self.session.pk)
            if all(c.last_seq >= seq for c in self.clients):
                return time.perf_counter()
            await asyncio.sleep(0.05)
        return None

    async def close(self) -> tuple[int, int, int]:
        """Stop the viewers; return (events lost, duplicates, cells stuck)."""
        for client in self.clients:
            client.running = False
        await asyncio.gather(*self.tasks)
        seq = await db(last_seq, self.session.pk)
        lost = sum(c.lost(seq) for c in self.clients)
        dups = sum(c.duplicates for c in self.clients)
        stuck = await db(stuck_cells, [self.session.pk])
        return lost, dups, stuck

    def reconnects(self) -> int:
        return sum(c.connects - 1 for c in self.clients)


async def read_back(scene: Scene, fault: float, notes: list[str], attempts: int = 3) -> bool:
    """Run ``cat /workspace/kept`` until it works (at most ``attempts`` cells); note each
    failure. Returns whether the first one worked; ``scene.recovered_at`` is when one did."""
    for attempt in range(attempts):
        cell, status = await scene.run("cat /workspace/kept", timeout=120)
        if status == "finished":
            output = await db(cell_output, cell.pk)
            notes.append(f"next cell finished at {time.perf_counter() - fault:.1f} s "
                         f"(attempt {attempt + 1}); workspace kept: {output.strip() == 'kept'}")
            scene.recovered_at = time.perf_counter()
            return attempt == 0
        notes.append(f"FINDING: next cell {await db(cell_detail, cell.pk)}")
    return False


def cell_output(cell_id: int) -> str:
    from agentide.sessions.models import Cell

    return str(Cell.objects.get(pk=cell_id).output)


def cell_detail(cell_id: int) -> str:
    from agentide.sessions.models import Cell

    cell = Cell.objects.get(pk=cell_id)
    error = f", error: {cell.error[:120]!r}" if cell.error else ""
    return f"cell {cell.position} {cell.status} (outcome {cell.outcome or '-'}{error})"
