"""Helpers shared by the sandbox tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentide.sandboxes.backends.base import ExecResult, Pty, SandboxHandle, SandboxLimits
from agentide.sandboxes.backends.docker import DockerBackend

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("AGENTIDE_SANDBOX_IMAGE", "agentide-sandbox:latest")
TEST_LIMITS = SandboxLimits(memory_mb=256, cpus=1.0, pids_limit=128, tmp_mb=16, fsize_mb=32)
# The OCI runtimes the sandbox suites run under, by test id: the engine's default (runc) and
# gVisor (scripts/lib.sh ensure_runsc registers it).
RUNTIMES = {"runc": "", "runsc": "runsc"}


@dataclass
class Run:
    result: ExecResult
    stdout: bytes
    stderr: bytes
    chunks: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")


def run(
    backend: DockerBackend,
    handle: SandboxHandle,
    command: str,
    *,
    timeout_s: float = 20,
    command_id: str | None = None,
) -> Run:
    """Run a command and collect its output (only for commands with modest output)."""
    chunks: list[tuple[str, bytes]] = []
    result = backend.exec(
        handle,
        command,
        command_id=command_id or uuid.uuid4().hex,
        timeout_s=timeout_s,
        on_output=lambda stream, data: chunks.append((stream, data)),
    )
    stdout = b"".join(d for s, d in chunks if s == "stdout")
    stderr = b"".join(d for s, d in chunks if s == "stderr")
    return Run(result, stdout, stderr, chunks)


def wait_for(condition: Callable[[], bool], *, timeout_s: float = 10, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.05)  # polling interval, not a wait for the thing itself


class Screen:
    """Collects what a terminal echoes until a condition holds (deadline, no sleeps)."""

    def __init__(self, backend: DockerBackend, pty: Pty) -> None:
        self.backend = backend
        self.pty = pty
        self.data = bytearray()
        self.exit_code: int | None = None
        self.closed = False

    def text(self) -> str:
        return self.data.decode(errors="replace")

    def until(self, *needles: str, timeout_s: float = 20) -> str:
        """Pump until any of ``needles`` shows."""
        deadline = time.monotonic() + timeout_s
        while not any(n in self.text() for n in needles):
            if self.closed or time.monotonic() > deadline:
                pytest.fail(f"terminal never showed {needles!r}; "
                            f"it showed {self.text()[-2000:]!r}")
            self.pump(deadline - time.monotonic())
        return self.text()

    def until_closed(self, *, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.closed:
            if time.monotonic() > deadline:
                pytest.fail(f"terminal never closed; it showed {self.text()[-2000:]!r}")
            self.pump(deadline - time.monotonic())

    def pump(self, timeout_s: float) -> None:
        out = self.backend.read_pty(self.pty, max(timeout_s, 0.01))
        if out is None:
            return
        if out.closed:
            self.closed = True
            self.exit_code = out.exit_code
        self.data += out.data
