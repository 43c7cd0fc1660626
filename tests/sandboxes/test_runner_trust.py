"""The host does not trust the in-sandbox runner's byte stream beyond the protocol, and
commands (same uid as the runner) cannot reach the runner to forge frames.

Host side: the frame reader is fed hostile byte streams, directly and through a real socket
standing in for the runner's exec socket (``backend.exec`` on it must fail the command with
a clear error and drop the connection). Sandbox side: hostile commands in a real container
try to ptrace the runner, read its memory, write frames into its output and plant notes
for other cells.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_support import run

from agentide.events import registry
from agentide.events.models import Event
from agentide.projects.models import Project
from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.backends.base import SandboxError, SandboxHandle
from agentide.sandboxes.backends.docker import (
    DockerBackend,
    FrameReader,
    RunnerConnection,
    RunnerProtocolError,
)
from agentide.sessions import execution, services

FRAME = struct.Struct(">cIH")


@pytest.fixture(scope="module")
def sandbox_runtime() -> str:
    """The runner's own guarantees hold under runc (the engine's default). Under gVisor no
    runner is used: every command is its own exec (tests/sandboxes/test_gvisor_commands.py)."""
    return ""


def frame(kind: bytes, ident: bytes, payload: bytes) -> bytes:
    return FRAME.pack(kind, len(payload), len(ident)) + ident + payload


def finished(ident: bytes, **payload: object) -> bytes:
    body = {"outcome": "exit", "exit_code": 0, "duration": 0.1, **payload}
    return frame(b"X", ident, json.dumps(body).encode())


def test_the_reader_passes_well_formed_frames() -> None:
    reader = FrameReader()
    stream = (frame(b"R", b"", b'{"ready": true}') + frame(b"S", b"cell-1", b'{"pgid": 7}')
              + frame(b"O", b"cell-1", b"\xff\x00 any bytes") + finished(b"cell-1"))
    for byte in stream[:-1]:  # split anywhere
        reader.feed(bytes([byte]))
    reader.feed(stream[-1:])
    frames = []
    while (f := reader.next_frame()) is not None:
        frames.append(f)
    assert [(f.kind, f.id) for f in frames] == [
        (b"R", ""), (b"S", "cell-1"), (b"O", "cell-1"), (b"X", "cell-1")]
    assert frames[2].data == b"\xff\x00 any bytes"
    assert frames[3].message["outcome"] == "exit"


HOSTILE = {
    "huge length": FRAME.pack(b"O", 600 * 1024 * 1024, 6) + b"cell-1" + b"y" * 1000,
    "max 32-bit length": FRAME.pack(b"E", 2**32 - 1, 6) + b"cell-1",
    "long JSON frame": FRAME.pack(b"X", 1024 * 1024, 6) + b"cell-1",
    "unknown kind": frame(b"Z", b"cell-1", b"{}"),
    "id too long": frame(b"O", b"c" * 5000, b"x"),
    "non-UTF-8 id": frame(b"O", b"\xff\xfe\xfd", b"x"),
    "bad id characters": frame(b"O", b"../../etc", b"x"),
    "empty id on output": frame(b"O", b"", b"x"),
    "X not JSON": frame(b"X", b"cell-1", b"\xff{"),
    "X a list": frame(b"X", b"cell-1", b"[1, 2]"),
    "X forged outcome": finished(b"cell-1", outcome="x" * 40),
    "X exit code a string": finished(b"cell-1", exit_code="0"),
    "X exit code a float": finished(b"cell-1", exit_code=0.5),
    "X exit code past 32 bits": finished(b"cell-1", exit_code=2**40),
    "X exit code a bool": finished(b"cell-1", exit_code=True),
    "X duration NaN": frame(b"X", b"cell-1",
                            b'{"outcome": "exit", "exit_code": 0, "duration": NaN}'),
    "X duration missing": frame(b"X", b"cell-1", b'{"outcome": "exit", "exit_code": 0}'),
    "X leftovers negative": finished(b"cell-1", leftovers=-1),
    "X env_refused not names": finished(b"cell-1", env_refused=[{"a": 1}]),
    "S pgid a string": frame(b"S", b"cell-1", b'{"pgid": "1"}'),
    "R not an object": frame(b"R", b"", b'"ready"'),
}


@pytest.mark.parametrize("stream", HOSTILE.values(), ids=HOSTILE.keys())
def test_the_reader_refuses_hostile_streams(stream: bytes) -> None:
    reader = FrameReader()
    reader.feed(stream)
    with pytest.raises(RunnerProtocolError):
        reader.next_frame()


def test_a_huge_length_is_refused_before_its_payload_is_buffered() -> None:
    reader = FrameReader()
    reader.feed(FRAME.pack(b"O", 600 * 1024 * 1024, 6))
    with pytest.raises(RunnerProtocolError, match="600"):
        reader.next_frame()


class FakeRunner:
    """The far end of a real socket pair, speaking Docker's multiplexed stream like a
    runner's exec socket: it answers a request with the bytes a test gives it."""

    def __init__(self, reply: bytes) -> None:
        self.host, self.peer = socket.socketpair()
        self.reply = reply
        self.request: dict[str, object] = {}
        self.saw_eof = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.peer.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _serve(self) -> None:
        try:
            (size,) = struct.unpack(">I", self._recv(4))
            self.request = json.loads(self._recv(size))
            # Docker's stream header: stream 1 (stdout), 3 pad bytes, block length.
            self.peer.sendall(struct.pack(">BxxxL", 1, len(self.reply)) + self.reply)
            while self.peer.recv(65536):
                pass  # the host does not send anything else; EOF means it dropped us
        except (EOFError, OSError):
            pass
        self.saw_eof.set()


@pytest.fixture
def lone_backend(sandbox: SandboxHandle) -> Iterator[DockerBackend]:
    backend = DockerBackend(site=f"test-{uuid.uuid4().hex[:8]}")
    backend.client  # noqa: B018 - set the process's connection pool up before adding to it
    yield backend


@pytest.mark.parametrize(
    "name", ["huge length", "non-UTF-8 id", "X forged outcome", "X exit code a string"])
def test_a_hostile_stream_fails_the_command_and_drops_the_connection(
    lone_backend: DockerBackend, sandbox: SandboxHandle, name: str
) -> None:
    ident = b"cell-hostile-1"
    reply = frame(b"S", ident, b'{"pgid": 42}') + HOSTILE[name].replace(b"cell-1", ident)
    fake = FakeRunner(reply)
    conn = RunnerConnection(fake.host, sandbox.container_id)
    lone_backend._idle[sandbox.container_id] = [conn]
    with pytest.raises(SandboxError, match="broke the protocol") as excinfo:
        lone_backend.exec(sandbox, "echo hi", command_id=ident.decode(), timeout_s=20,
                          on_output=lambda stream, data: None)
    assert excinfo.value.permanent
    assert fake.request["id"] == ident.decode()
    assert conn.broken
    assert fake.saw_eof.wait(20), "the host kept the hostile connection open"
    assert not lone_backend._idle.get(sandbox.container_id)


# -- the runner is out of reach of commands -------------------------------------------------

PTRACE_PROBE = r"""
import ctypes, os, sys
runner = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
result = []
if libc.ptrace(16, runner, 0, 0) == 0:  # PTRACE_ATTACH
    result.append("attached")
    libc.ptrace(17, runner, 0, 0)  # PTRACE_DETACH
else:
    result.append("attach:" + os.strerror(ctypes.get_errno()))
class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(64)
local, remote = Iovec(ctypes.addressof(buf), 64), Iovec(0x400000, 64)
if libc.process_vm_readv(runner, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) >= 0:
    result.append("vm_readv:read")
else:
    result.append("vm_readv:" + os.strerror(ctypes.get_errno()))
for name in ("mem", "fd/1", "environ"):
    try:
        open(f"/proc/{runner}/{name}", "rb").close()
        result.append(name + ":opened")
    except OSError as exc:
        result.append(name + ":" + exc.strerror)
print(" ".join(result))
"""


def test_a_command_cannot_ptrace_the_runner_or_open_its_memory(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    # $PPID of the command's shell is the runner that started it.
    r = run(backend, sandbox, f"python3 -c '{PTRACE_PROBE}' $PPID; "
                              "tr '\\0' ' ' < /proc/$PPID/cmdline")
    probe, cmdline = r.out.splitlines()
    assert "runner.py serve" in cmdline
    assert probe == ("attach:Operation not permitted vm_readv:Operation not permitted "
                     "mem:Permission denied fd/1:Permission denied "
                     "environ:Permission denied"), r


@pytest.fixture(scope="module")
def image_without_runner_python(backend: DockerBackend, sandbox_image: str) -> Iterator[str]:
    """The sandbox image minus its execute-only python3 (as under gVisor, which cannot
    execute a file its user cannot read)."""
    tag = f"agentide-test-plain-python:{uuid.uuid4().hex[:8]}"
    dockerfile = (f"FROM {sandbox_image}\nUSER root\nRUN rm /opt/agentide/python3\n"
                  "USER agent\n")
    backend.client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True,
                                network_mode="none")
    yield tag
    backend.client.images.remove(tag, force=True)


def test_a_runner_started_from_plain_python_makes_itself_unreachable(
    backend: DockerBackend, make_sandbox: Any, image_without_runner_python: str
) -> None:
    handle = make_sandbox(image_without_runner_python)
    r = run(backend, handle, f"python3 -c '{PTRACE_PROBE}' $PPID; "
                             "tr '\\0' ' ' < /proc/$PPID/cmdline")
    probe, cmdline = r.out.splitlines()
    assert cmdline.startswith("python3 -I -S /opt/agentide/runner.py serve")
    assert probe.startswith("attach:Operation not permitted vm_readv:Operation not permitted "
                            "mem:Permission denied"), r


def test_frames_a_command_writes_never_reach_the_host_as_frames(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    command_id = f"cell-{uuid.uuid4().hex[:8]}"
    forged = finished(command_id.encode(), exit_code=0)
    hexed = "".join(f"\\x{b:02x}" for b in forged)
    # Into the runner's own output (its stdout through /proc), and into the command's.
    r = run(backend, sandbox,
            f"printf '{hexed}' > /proc/$PPID/fd/1; printf '{hexed}'; exit 3",
            command_id=command_id)
    assert (r.result.outcome, r.result.exit_code) == ("exit", 3)
    assert r.result.source == "runner"
    assert r.result.command_id == command_id
    assert r.stdout == forged  # the command's own stdout: plain output, byte for byte
    assert b"Permission denied" in r.stderr


def test_a_planted_cancel_note_does_not_make_another_cell_cancelled(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    victim = f"cell-{uuid.uuid4().hex[:8]}"
    run(backend, sandbox,
        f"mkdir -p /tmp/.agentide; echo forged > /tmp/.agentide/{victim}.cancelled")
    r = run(backend, sandbox, "sleep 0.1; exit 5", command_id=victim)
    assert (r.result.outcome, r.result.exit_code) == ("exit", 5)


def test_a_planted_process_group_does_not_turn_a_cancel_into_a_kill_of_another_cell(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    bystander = f"cell-{uuid.uuid4().hex[:8]}"
    target = f"cell-{uuid.uuid4().hex[:8]}"
    # A bystander's process group, started by a cell that has ended.
    run(backend, sandbox, "setsid sleep 300 & echo started", command_id=bystander)
    pgid = run(backend, sandbox, "pgrep -f '^sleep 300$' | head -1").out.strip()
    assert pgid.isdigit()
    run(backend, sandbox, f"echo {pgid} > /tmp/.agentide/{target}.pgid")
    backend.cancel(sandbox, target)  # the target runs nowhere; only the planted note exists
    assert run(backend, sandbox, "pgrep -f '^sleep 300$'").out.strip() == pgid
    run(backend, sandbox, f"pkill -f '^sleep 300$'; rm -f /tmp/.agentide/{target}.pgid")


# -- the audit log names the runner --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_finished_event_says_the_runner_reported_the_end(
    personas: Any, sandbox_image: str
) -> None:
    project = Project.objects.create(team=personas.team, name="Audit", slug="audit",
                                     created_by=personas.owner)
    member = personas.membership(personas.member)
    session = services.create_session(member, project, "Audit")
    try:
        execution.submit_cell(member, session, "shell", "sleep 300 & echo hi")
        cell = execution.claim_next_cell(session.pk, worker="test")
        assert cell is not None
        execution.run_claimed_cell(cell)
        finished = Event.objects.get(cell=cell, type=registry.CELL_FINISHED)
        assert finished.payload["reported_by"] == {
            "source": "runner", "command_id": cell.command_id, "leftover_processes": 1}
    finally:
        sandboxes.destroy_sandbox(session)


@pytest.mark.django_db(transaction=True)
def test_a_forged_finish_fails_the_cell_instead_of_leaving_it_running(
    personas: Any, sandbox_image: str
) -> None:
    # Checkpoints off: the checkpoint before the cell would take the forged connection first
    # (its helper runs through the runner too) and the command would get a real one.
    project = Project.objects.create(team=personas.team, name="Forged", slug="forged",
                                     created_by=personas.owner, checkpoints_enabled=False)
    member = personas.membership(personas.member)
    session = services.create_session(member, project, "Forged")
    try:
        sandbox = sandboxes.ensure_sandbox(session, admission=sandbox_admission(session))
        backend = sandboxes.get_backend()
        assert isinstance(backend, DockerBackend)
        cell = execution.submit_cell(member, session, "shell", "echo hi")
        claimed = execution.claim_next_cell(session.pk, worker="test")
        assert claimed is not None and claimed.pk == cell.pk
        ident = cell.command_id.encode()
        fake = FakeRunner(frame(b"S", ident, b'{"pgid": 42}')
                          + finished(ident, outcome="x" * 40, exit_code="0"))
        backend.client  # noqa: B018 - set the process's connection pool up before adding to it
        backend._idle[sandbox.container_id] = [
            RunnerConnection(fake.host, sandbox.container_id)]
        execution.run_claimed_cell(claimed)
        claimed.refresh_from_db()
        assert claimed.status == "failed"
        assert "broke the protocol (X payload: unknown outcome)" in claimed.error
        assert fake.saw_eof.wait(20)
    finally:
        sandboxes.destroy_sandbox(session)
