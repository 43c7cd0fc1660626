"""Hostile commands: each must be contained, after which `echo ok` still works in the same
sandbox and another session's sandbox is unaffected."""

from __future__ import annotations

import uuid

import pytest
from sandbox_support import run, wait_for

from agentide.lib.output import CappedOutput, StreamDecoder
from agentide.sandboxes.backends.base import SandboxError, SandboxHandle
from agentide.sandboxes.backends.docker import DockerBackend


def _still_fine(backend: DockerBackend, handle: SandboxHandle, other: SandboxHandle) -> None:
    for h in (handle, other):
        r = run(backend, h, "echo ok", timeout_s=30)
        assert (r.result.outcome, r.out) == ("exit", "ok\n")


@pytest.fixture(autouse=True)
def _other_session_is_fine_before(
    backend: DockerBackend, other_sandbox: SandboxHandle
) -> None:
    assert run(backend, other_sandbox, "echo ok").out == "ok\n"


def test_fork_bomb_is_contained(
    backend: DockerBackend, sandbox: SandboxHandle, other_sandbox: SandboxHandle,
    sandbox_runtime: str,
) -> None:
    r = run(backend, sandbox, "bomb() { bomb | bomb & }; bomb", timeout_s=3)
    assert r.result.outcome in ("timeout", "exit")
    restarts = 0

    def settled() -> bool:
        """`echo ok` answers and the bomb's processes are gone."""
        nonlocal restarts
        try:
            if run(backend, sandbox, "echo ok", timeout_s=30).out != "ok\n":
                return False
            out = run(backend, sandbox, "ps -e --no-headers | wc -l").out.strip()
            return out.isdigit() and int(out) < 10  # "" while forks still fail
        except SandboxError:
            if not sandbox_runtime:
                raise  # under runc the sandbox itself always survives the bomb
            # Under gVisor (ptrace platform) the bomb's churn can take the whole sandbox
            # down: the backend says so instead of hanging, and what services.run_command
            # does next is start it again (the workspace is kept).
            if not backend.is_running(sandbox):
                restarts += 1
                backend.start(sandbox)
            return False

    # gVisor is much slower to settle: a generous wait, no timing asserted.
    wait_for(settled, timeout_s=300, what="sandbox usable and fork bomb processes gone")
    assert restarts == 0 or sandbox_runtime
    _still_fine(backend, sandbox, other_sandbox)


def test_memory_bomb_is_reported_as_oom(
    backend: DockerBackend, sandbox: SandboxHandle, other_sandbox: SandboxHandle,
    sandbox_runtime: str,
) -> None:
    r = run(backend, sandbox,
            "python3 -c 'a = []\nwhile True: a.append(bytearray(16 * 1024 * 1024))'",
            timeout_s=60)
    assert r.result.outcome == "oom", r
    assert r.result.exit_code == 137
    if sandbox_runtime and not backend.is_running(sandbox):
        # gVisor's kernel shares the sandbox's memory limit: the whole sandbox was killed,
        # reported as this command's OOM; services.run_command starts it again.
        backend.start(sandbox)
    _still_fine(backend, sandbox, other_sandbox)


def test_filling_tmp_fails_cleanly(
    backend: DockerBackend, sandbox: SandboxHandle, other_sandbox: SandboxHandle
) -> None:
    r = run(backend, sandbox, "head -c 100M /dev/zero > /tmp/fill")
    assert r.result.exit_code != 0
    assert b"No space left" in r.stderr
    # The shell state is still saved while /tmp is full.
    run(backend, sandbox, "cd /workspace && export WHILE_FULL=1")
    assert run(backend, sandbox, "echo $WHILE_FULL").out == "1\n"
    run(backend, sandbox, "rm -f /tmp/fill")
    _still_fine(backend, sandbox, other_sandbox)


def test_filling_workspace_hits_the_file_size_limit(
    backend: DockerBackend, sandbox: SandboxHandle, other_sandbox: SandboxHandle
) -> None:
    r = run(backend, sandbox, "head -c 100M /dev/zero > /workspace/fill")
    assert r.result.exit_code != 0
    # wc, not stat: Debian's runsc (2022) answers coreutils' statx() with EINVAL.
    size = int(run(backend, sandbox, "wc -c < /workspace/fill").out)
    assert size <= 32 * 1024 * 1024
    run(backend, sandbox, "rm -f /workspace/fill")
    _still_fine(backend, sandbox, other_sandbox)


def test_yes_flood_streams_with_bounded_capture(
    backend: DockerBackend, sandbox: SandboxHandle, other_sandbox: SandboxHandle
) -> None:
    decoder = StreamDecoder()
    capture = CappedOutput(head_chars=4096, tail_chars=4096)
    received = 0

    def on_output(stream: str, data: bytes) -> None:
        nonlocal received
        received += len(data)
        capture.append(decoder.feed(data))

    result = backend.exec(sandbox, "yes", command_id=uuid.uuid4().hex, timeout_s=2,
                          on_output=on_output)
    assert result.outcome == "timeout"
    assert received > 1_000_000
    assert capture.total_chars == received
    assert len(capture.text()) < 9000
    assert capture.head.startswith("y\ny\n")
    _still_fine(backend, sandbox, other_sandbox)


def test_a_command_that_closes_its_output_is_still_followed_to_the_end(
    backend: DockerBackend, sandbox: SandboxHandle, other_sandbox: SandboxHandle
) -> None:
    r = run(backend, sandbox, "exec >&- 2>&-; sleep 0.2; exit 4")
    assert (r.result.outcome, r.result.exit_code) == ("exit", 4)
    _still_fine(backend, sandbox, other_sandbox)


def test_killing_the_runner_fails_that_command_only(
    backend: DockerBackend, sandbox: SandboxHandle, other_sandbox: SandboxHandle,
    sandbox_runtime: str,
) -> None:
    command = "pkill -KILL -f 'runner.py serve'; sleep 5"
    if sandbox_runtime:
        # Under gVisor there is no runner to kill (one exec per command): it just runs.
        assert run(backend, sandbox, command).result.source == "exec"
    else:
        with pytest.raises(SandboxError) as excinfo:
            run(backend, sandbox, command)
        assert not excinfo.value.permanent
    _still_fine(backend, sandbox, other_sandbox)
