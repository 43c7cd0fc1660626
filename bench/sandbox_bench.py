"""Sandbox benchmark: prints numbers, asserts nothing.

    .venv/bin/python bench/sandbox_bench.py            # full run (~1-2 min)
    .venv/bin/python bench/sandbox_bench.py --smoke    # a few iterations (< 30 s)
    .venv/bin/python bench/sandbox_bench.py --runtime runsc   # under gVisor (registered by
                                                              # scripts/lib.sh ensure_runsc)

Measures, on the real Docker engine with the real sandbox image:
- cold start: create + start a hardened container, then the first `echo` through the runner;
- warm-pool start: a pre-created running container, first `echo` (opens the runner socket);
  the pool claim itself is one conditional UPDATE in the database and is not included;
- `echo` round trip: backend (runner over a kept exec socket) vs a raw `docker exec` through
  the Engine API (create + start + inspect, what one exec per command costs) vs the backend's
  one-exec-per-command fallback, all in the same run, with ratios;
- 50 MB of output streamed through the backend into the notebook's decoder and capped
  capture: time, throughput and the process's peak RSS growth.
Targets (issue 3): warm start <= 100 ms, round trip <= 1.3x raw docker exec, memory flat.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentide.lib.output import CappedOutput, StreamDecoder
from agentide.sandboxes.backends.base import (
    SandboxHandle,
    SandboxLimits,
    SandboxSpec,
)
from agentide.sandboxes.backends.docker import SANDBOX_UID, DockerBackend

IMAGE = os.environ.get("AGENTIDE_SANDBOX_IMAGE", "agentide-sandbox:latest")
LIMITS = SandboxLimits(memory_mb=512, cpus=1.0, pids_limit=256, tmp_mb=64)


def summary(name: str, samples_s: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples_s)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (f"{name:<34} n={len(ms):<4} median={statistics.median(ms):8.2f} ms  "
            f"p99={p99:8.2f}  min={ms[0]:8.2f}  max={ms[-1]:8.2f}")


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def echo(backend: DockerBackend, handle: SandboxHandle) -> None:
    result = backend.exec(handle, "echo hi", command_id=uuid.uuid4().hex, timeout_s=30,
                          on_output=lambda s, d: None)
    assert result.exit_code == 0, result


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="few iterations, < 30 s")
    parser.add_argument("--runtime", default="",
                        help='OCI runtime of the sandboxes ("" = the engine default, runc; '
                             '"runsc" = gVisor)')
    args = parser.parse_args()
    limits = replace(LIMITS, runtime=args.runtime)
    cold_n, warm_n, echo_n, flood_n = (2, 2, 30, 1) if args.smoke else (10, 10, 300, 3)

    site = f"bench-{uuid.uuid4().hex[:8]}"
    backend = DockerBackend(site=site)
    spec = SandboxSpec(image=IMAGE, limits=limits, labels={"bench": "1"})
    made: list[SandboxHandle] = []
    print(f"sandbox bench ({'smoke' if args.smoke else 'full'}), image {IMAGE}, "
          f"runtime {args.runtime or 'runc (engine default)'}, {os.cpu_count()} CPUs")
    try:
        # Cold start: new container + first command.
        cold = []
        for _ in range(cold_n):
            t = time.perf_counter()
            handle = backend.create(spec)
            echo(backend, handle)
            cold.append(time.perf_counter() - t)
            backend.destroy(handle)
        print(summary("cold start (create + first echo)", cold))

        # Warm pool: containers already running; first command opens the runner socket.
        pool = [backend.create(spec) for _ in range(warm_n)]
        made.extend(pool)
        warm = []
        for handle in pool:
            t = time.perf_counter()
            echo(backend, handle)
            warm.append(time.perf_counter() - t)
        print(summary("warm-pool start (first echo)", warm))

        handle = pool[0]
        api = backend.api

        def raw_exec() -> None:
            exec_id = api.exec_create(handle.container_id, ["echo", "hi"], user=SANDBOX_UID)["Id"]
            api.exec_start(exec_id)
            api.exec_inspect(exec_id)

        fallback = DockerBackend(site=site)
        fallback._no_runner.add(handle.container_id)  # force one exec per command

        # Interleave so both see the same machine load.
        via_backend: list[float] = []
        via_raw: list[float] = []
        via_fallback: list[float] = []
        for _ in range(echo_n):
            via_backend += timed(lambda: echo(backend, handle), 1)
            via_raw += timed(raw_exec, 1)
            if len(via_fallback) < max(10, echo_n // 10):
                via_fallback += timed(lambda: echo(fallback, handle), 1)
        print(summary("echo via backend (runner)", via_backend))
        print(summary("echo via raw docker exec (API)", via_raw))
        print(summary("echo via fallback (exec/command)", via_fallback))
        ratio = statistics.median(via_backend) / statistics.median(via_raw)
        print(f"{'round trip ratio backend/raw exec':<34} {ratio:.3f}x (median)")

        # 50 MB flood through decoder + capped capture.
        size = 50 * 1024 * 1024
        flood = []
        growth = []
        for _ in range(flood_n):
            decoder = StreamDecoder()
            capture = CappedOutput()
            received = 0
            peak = start_rss = rss_kib()

            def on_output(
                stream: str, data: bytes, decoder: StreamDecoder = decoder,
                capture: CappedOutput = capture,
            ) -> None:
                nonlocal received, peak
                received += len(data)
                capture.append(decoder.feed(data))
                if received % (4 * 1024 * 1024) < len(data):
                    peak = max(peak, rss_kib())

            t = time.perf_counter()
            result = backend.exec(handle, f"yes | head -c {size}", command_id=uuid.uuid4().hex,
                                  timeout_s=120, on_output=on_output)
            flood.append(time.perf_counter() - t)
            assert received == size and result.exit_code == 0, (received, result)
            growth.append(max(peak, rss_kib()) - start_rss)
        print(summary("50 MB output stream", flood))
        print(f"{'50 MB throughput':<34} {size / statistics.median(flood) / 1e6:.1f} MB/s")
        print(f"{'RSS growth during 50 MB (max)':<34} {max(growth)} KiB; "
              f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB")
    finally:
        for handle in made:
            backend.destroy(handle)


if __name__ == "__main__":
    main()
