"""Drill: stop the Docker engine in the middle of a command, then start it again.

Never the shared engine: the drill starts a private ``dockerd`` (its own data root, exec
root, socket and containerd; no bridge, no iptables), loads the sandbox image into it once
(kept in its data root for later runs), points the worker at it with ``DOCKER_HOST``, and
stops and starts only that one. Expected: the cell ends (failed, readable error) instead of
staying ``running``; once the engine is back the next cell restarts the container and runs.
If it fails, up to two more are tried and the failure is reported. Recovery time: from the
stop to the first later cell's ``finished``. Afterwards the worker goes back to the shared
engine and the private one is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from bench.drills import DrillResult
from bench.drills.common import Scene, cell_detail, read_back
from bench.stack import SITE, VAR, Fixture, Stack, db, sweep_engine, wait_cell_done
from tests.support import wait_until

SOCKET = "unix:///run/agentide-bench-docker.sock"
PIDFILE = Path("/run/agentide-bench-docker.pid")
DATA_ROOT = "/var/lib/agentide-bench-docker"
EXEC_ROOT = "/run/agentide-bench-docker-exec"
IMAGE = os.environ.get("AGENTIDE_SANDBOX_IMAGE", "agentide-sandbox:latest")


def _private(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", *argv], env={**os.environ, "DOCKER_HOST": SOCKET},
                          capture_output=True, timeout=timeout)


def _engine_up() -> bool:
    try:
        return _private("info", "--format", "{{.ID}}", timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _engine_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start_engine() -> None:
    """Start the private dockerd (unless it already runs) and make sure it has the image."""
    if _engine_pid() is None:
        log = (VAR / "dockerd-private.log").open("ab")
        subprocess.Popen([
            "dockerd", "--data-root", DATA_ROOT, "--host", SOCKET, "--pidfile", str(PIDFILE),
            "--exec-root", EXEC_ROOT, "--bridge=none", "--iptables=false",
        ], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(_engine_up, timeout=60, what="the private Docker engine", interval=0.2)
    if _private("image", "inspect", IMAGE).returncode != 0:
        save = subprocess.Popen(["docker", "save", IMAGE], stdout=subprocess.PIPE)
        assert save.stdout is not None
        subprocess.run(["docker", "load"], stdin=save.stdout, check=True, capture_output=True,
                       env={**os.environ, "DOCKER_HOST": SOCKET}, timeout=600)
        save.wait(timeout=60)


def stop_engine(timeout: float = 60) -> None:
    """SIGTERM the private dockerd (it stops its containers first) and wait for it to exit."""
    pid = _engine_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _engine_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if (pid := _engine_pid()) is not None:
        os.kill(pid, signal.SIGKILL)


def run(stack: Stack, fixture: Fixture, smoke: bool) -> DrillResult:
    from agentide.sandboxes.backends.docker import DockerBackend

    start_engine()
    shared_env = dict(stack.worker_env)
    try:
        if stack.worker is not None:
            stack.worker.stop()
        stack.start_worker(**{**shared_env, "DOCKER_HOST": SOCKET})
        return asyncio.run(_run(stack, fixture))
    finally:
        with contextlib.suppress(Exception):
            if _engine_pid() is None:
                start_engine()
            sweep_engine(DockerBackend(SOCKET, site=SITE))
        stop_engine()
        if stack.worker is not None:
            stack.worker.stop()
        stack.start_worker(**shared_env)


async def _run(stack: Stack, fixture: Fixture) -> DrillResult:
    result = DrillResult("stop the Docker engine and start it again")
    scene = await Scene.open(stack, fixture, "drill engine restart", viewers=3)
    notes: list[str] = []
    first_ok = False
    try:
        await scene.run("echo kept > /workspace/kept")
        for _ in range(6):  # several worker processes now hold idle runner connections
            await scene.run("true")
        cell = await scene.stream(lines=600)
        fault = time.perf_counter()
        await asyncio.to_thread(stop_engine)
        notes.append(f"engine stopped in {time.perf_counter() - fault:.1f} s")
        status = await db(wait_cell_done, cell.pk, 60)
        notes.append(f"{await db(cell_detail, cell.pk)} at {time.perf_counter() - fault:.1f} s")
        await asyncio.to_thread(start_engine)
        notes.append(f"engine answering again at {time.perf_counter() - fault:.1f} s")
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
