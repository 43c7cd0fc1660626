"""Fault drills: break one part of the running stack and measure what the product does.

Each drill streams output to websocket viewers that behave like the notebook page, breaks
something, and reports events lost (must be 0), duplicates (0), cells left queued or
running (0) and the time from the fault to recovery (what recovery means is in each drill's
docstring). Every drill restores what it broke before it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class DrillResult:
    name: str
    lost: int = -1
    duplicates: int = -1
    stuck: int = -1
    recover_s: float | None = None
    ok: bool = False
    notes: str = ""

    def line(self) -> str:
        recover = f"{self.recover_s:.1f} s" if self.recover_s is not None else "-"
        return (f"lost {self.lost}, duplicates {self.duplicates}, stuck {self.stuck}, "
                f"recovered in {recover}; {'OK' if self.ok else 'FAIL'}; {self.notes}")

    def judge(self) -> DrillResult:
        self.ok = (self.lost == 0 and self.duplicates == 0 and self.stuck == 0
                   and self.recover_s is not None)
        return self


def drill_table(results: list[Any]) -> str:
    lines = ["| drill | events lost | duplicates | cells stuck | time to recover | result | "
             "what happened |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        recover = f"{r.recover_s:.1f} s" if r.recover_s is not None else "did not recover"
        lines.append(f"| {r.name} | {r.lost} | {r.duplicates} | {r.stuck} | {recover} | "
                     f"{'OK' if r.ok else 'FAIL'} | {r.notes} |")
    return "\n".join(lines)


def _drill(module: str) -> Callable[..., DrillResult]:
    def run(stack: Any, fixture: Any, smoke: bool) -> DrillResult:
        from importlib import import_module

        return import_module(f"bench.drills.{module}").run(stack, fixture, smoke)

    return run


DRILLS: dict[str, Callable[..., DrillResult]] = {
    "worker-kill": _drill("worker_kill"),
    "redis-restart": _drill("redis_restart"),
    "daphne-restart": _drill("daphne_restart"),
    "sandbox-kill": _drill("sandbox_kill"),
    "engine-restart": _drill("engine_restart"),
}
