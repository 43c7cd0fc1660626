"""Rows of the results table, the machine's details, and the Markdown results file."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (q in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Row:
    """One figure: samples in ``unit`` (median / p90 / p99 / min / max), or a single
    ``value``."""

    name: str
    unit: str = "ms"
    samples: list[float] = field(default_factory=list)
    value: str = ""
    target: str = ""
    note: str = ""

    def cells(self) -> list[str]:
        if self.samples:
            stats = [statistics.median(self.samples), percentile(self.samples, 0.9),
                     percentile(self.samples, 0.99), min(self.samples), max(self.samples)]
            return [f"n={len(self.samples)}", *(_fmt(v, self.unit) for v in stats)]
        return ["", self.value, "", "", "", ""]


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.1f} {unit}"


HEADER = ["figure", "n", "median", "p90", "p99", "min", "max", "target", "note"]


def table(rows: list[Row]) -> str:
    """A Markdown table (also readable as plain text)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for row in rows:
        lines.append("| " + " | ".join([row.name, *row.cells(), row.target, row.note]) + " |")
    return "\n".join(lines)


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine() -> dict[str, str]:
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "docker": _run(["docker", "version", "--format", "{{.Server.Version}}"]),
        "python": platform.python_version(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "git commit": _run(["git", "rev-parse", "--short", "HEAD"]),
    }
