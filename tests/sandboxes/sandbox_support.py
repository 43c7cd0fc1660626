"""Helpers shared by the sandbox tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentide.sandboxes.backends.base import ExecResult, SandboxHandle, SandboxLimits
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


