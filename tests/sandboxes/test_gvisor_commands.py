"""Under gVisor (runsc) the in-sandbox runner is not used: gVisor cannot execute the runner's
execute-only python copy, and it lets a same-uid process open a non-dumpable process's
``/proc/<pid>/fd`` (measured: a command could write forged frames into a plain-python
runner's output and turn its own exit 3 into exit 0). Every command is its own exec there,
so its outcome comes from the engine, never from bytes a command can write.
"""

from __future__ import annotations

import json
import struct
import threading
import uuid

import pytest
from sandbox_support import run

from agentide.sandboxes.backends.base import SandboxHandle
from agentide.sandboxes.backends.docker import DockerBackend

FRAME = struct.Struct(">cIH")


@pytest.fixture(scope="module")
def sandbox_runtime() -> str:
    return "runsc"


def forged_finish(command_id: str) -> bytes:
    ident = command_id.encode()
    body = json.dumps({"outcome": "exit", "exit_code": 0, "duration": 0.1}).encode()
    return FRAME.pack(b"X", len(body), len(ident)) + ident + body


def test_commands_run_as_their_own_exec_and_cannot_forge_their_outcome(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    command_id = f"cell-{uuid.uuid4().hex[:8]}"
    hexed = "".join(f"\\x{b:02x}" for b in forged_finish(command_id))
    r = run(backend, sandbox,
            f"printf '{hexed}' > /proc/$PPID/fd/1 2>/dev/null; printf '{hexed}'; exit 3",
            command_id=command_id)
    assert (r.result.outcome, r.result.exit_code) == ("exit", 3), r
    assert r.result.source == "exec"
    assert r.stdout.endswith(forged_finish(command_id))  # plain output, byte for byte


def test_the_working_directory_and_environment_still_carry_over(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    run(backend, sandbox, "mkdir -p carried && cd carried && export CARRIED=yes")
    r = run(backend, sandbox, 'echo "$PWD $CARRIED"')
    assert r.out.strip() == "/workspace/carried yes", r


def test_a_command_is_cancelled(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    command_id = f"cancel-{uuid.uuid4().hex[:8]}"
    started = threading.Event()
    results = []

    def target() -> None:
        def on_output(stream: str, data: bytes) -> None:
            if b"started" in data:
                started.set()

        results.append(backend.exec(sandbox, "echo started; sleep 600", command_id=command_id,
                                    timeout_s=120, on_output=on_output))

    thread = threading.Thread(target=target)
    thread.start()
    assert started.wait(60)
    assert backend.cancel(sandbox, command_id)
    thread.join(60)
    assert results and results[0].outcome == "cancelled", results


def test_loader_variables_are_not_carried_to_later_commands(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    run(backend, sandbox, "echo 'echo INJECTED' > /workspace/evil.sh")
    r = run(backend, sandbox,
            "export BASH_ENV=/workspace/evil.sh LD_PRELOAD=/nonexistent.so KEEP_ME=1; echo ran")
    assert r.out == "ran\n", r
    later = run(backend, sandbox, 'echo "${BASH_ENV-unset} ${LD_PRELOAD-unset} $KEEP_ME"')
    assert later.out == "unset unset 1\n", later
    backend.write_file(sandbox, ".agentide/env",
                       b"BASH_ENV=/workspace/evil.sh\0LD_AUDIT=/x.so\0OK=yes\0",
                       max_bytes=1 << 20)
    r = run(backend, sandbox, 'echo "${OK}"')
    assert r.out == "yes\n", r
    assert b"not kept from the saved environment: BASH_ENV LD_AUDIT" in r.stderr
    run(backend, sandbox, "rm -f /workspace/.agentide/env /workspace/evil.sh")

