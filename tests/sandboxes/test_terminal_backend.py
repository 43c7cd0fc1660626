"""The sandbox terminal: a PTY in the container through the runner (issue 15, step 1).

Real Docker engine and the real sandbox image under runc, plus the host's frame bounds for
the terminal's frame kinds. gVisor sandboxes use no runner (see test_gvisor_commands.py):
their terminal is a TTY exec, tested in test_gvisor_terminal.py.
"""

from __future__ import annotations

import json
import struct
import time
import uuid

import pytest
from sandbox_support import Screen, run

from agentide.sandboxes.backends.base import Pty, SandboxError, SandboxHandle
from agentide.sandboxes.backends.docker import DockerBackend, FrameReader, RunnerProtocolError

FRAME = struct.Struct(">cIH")


@pytest.fixture(scope="module")
def sandbox_runtime() -> str:
    return ""  # runc, the engine's default


def frame(kind: bytes, ident: bytes, payload: bytes) -> bytes:
    return FRAME.pack(kind, len(payload), len(ident)) + ident + payload


# -- frame bounds (no container) ----------------------------------------------------------


def test_the_reader_passes_terminal_frames() -> None:
    reader = FrameReader()
    reader.feed(frame(b"P", b"term-1", b'{"pgid": 9}') + frame(b"T", b"term-1", b"\x1b[1m$ ")
                + frame(b"T", b"term-1", b"y" * 65536)
                + frame(b"Q", b"term-1", b'{"exit_code": null}'))
    frames = []
    while (f := reader.next_frame()) is not None:
        frames.append(f)
    assert [(f.kind, f.id) for f in frames] == [
        (b"P", "term-1"), (b"T", "term-1"), (b"T", "term-1"), (b"Q", "term-1")]
    assert frames[0].message == {"pgid": 9}
    assert frames[1].data == b"\x1b[1m$ "
    assert frames[3].message == {"exit_code": None}


HOSTILE = {
    "T past 64 KiB": FRAME.pack(b"T", 64 * 1024 + 1, 6) + b"term-1",
    "T huge": FRAME.pack(b"T", 2**32 - 1, 6) + b"term-1",
    "P long": FRAME.pack(b"P", 8192, 6) + b"term-1",
    "Q long": FRAME.pack(b"Q", 8192, 6) + b"term-1",
    "T bad id": frame(b"T", b"../x", b"x"),
    "T empty id": frame(b"T", b"", b"x"),
    "P not JSON": frame(b"P", b"term-1", b"\xff"),
    "P pgid missing": frame(b"P", b"term-1", b"{}"),
    "P pgid a string": frame(b"P", b"term-1", b'{"pgid": "1"}'),
    "P pgid zero": frame(b"P", b"term-1", b'{"pgid": 0}'),
    "Q exit code a string": frame(b"Q", b"term-1", b'{"exit_code": "0"}'),
    "Q exit code past 32 bits": frame(b"Q", b"term-1", json.dumps({"exit_code": 2**40}).encode()),
    "Q a list": frame(b"Q", b"term-1", b"[0]"),
}


@pytest.mark.parametrize("stream", HOSTILE.values(), ids=HOSTILE.keys())
def test_the_reader_refuses_hostile_terminal_frames(stream: bytes) -> None:
    reader = FrameReader()
    reader.feed(stream)
    with pytest.raises(RunnerProtocolError):
        reader.next_frame()


# -- the PTY in a real sandbox -------------------------------------------------------------


def test_a_terminal_runs_a_login_shell_as_the_sandbox_user(terminal: Screen) -> None:
    terminal.backend.write_pty(terminal.pty, b"echo who=$(id -u) tty=$(tty) term=$TERM\r")
    text = terminal.until("term=xterm-256color")
    assert "who=1000 tty=/dev/pts/" in text


def test_it_starts_in_the_sessions_persisted_cwd_and_env(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    run(backend, sandbox, "mkdir -p /workspace/termdir && cd /workspace/termdir && "
                          "export TERM_TEST_VAR=carried && export LD_PRELOAD=/tmp/x.so")
    pty = backend.open_pty(sandbox, f"term-{uuid.uuid4().hex[:8]}", rows=24, cols=80)
    screen = Screen(backend, pty)
    try:
        backend.write_pty(pty, b"echo at=$PWD var=$TERM_TEST_VAR pre=${LD_PRELOAD:-none}.\r")
        text = screen.until("pre=none.")
        assert "at=/workspace/termdir var=carried pre=none." in text
    finally:
        backend.close_pty(pty)
        screen.until_closed()
        run(backend, sandbox, "cd /workspace && unset TERM_TEST_VAR")


def test_programs_see_the_size_and_a_resize(terminal: Screen) -> None:
    backend, pty = terminal.backend, terminal.pty
    backend.write_pty(pty, b"echo size=$(stty size).\r")
    terminal.until("size=24 80.")
    backend.resize_pty(pty, 40, 132)
    backend.write_pty(pty, b"echo size=$(stty size).\r")
    terminal.until("size=40 132.")


def test_top_runs_in_batch_mode(terminal: Screen) -> None:
    terminal.backend.write_pty(terminal.pty, b"top -b -n1 | head -3; echo top-$((1+1))done\r")
    text = terminal.until("top-2done")
    assert "Tasks:" in text


def test_a_program_reading_the_terminal_gets_input_and_no_echo_input_is_not_echoed(
    terminal: Screen,
) -> None:
    backend, pty = terminal.backend, terminal.pty
    backend.write_pty(pty, b"read -p 'name? ' n; echo hello-$n\r")
    terminal.until("\rname? ")  # the prompt, not the echoed command
    backend.write_pty(pty, b"ada\r")
    terminal.until("hello-ada")
    backend.write_pty(pty, b"read -s -p 'secret? ' s; echo got-${#s}\r")
    terminal.until("\rsecret? ")
    backend.write_pty(pty, b"hunter2\r")
    text = terminal.until("got-7")
    assert "hunter2" not in text


def test_exit_closes_the_terminal_with_its_code(terminal: Screen) -> None:
    terminal.backend.write_pty(terminal.pty, b"exit 3\r")
    terminal.until_closed()
    assert terminal.exit_code == 3


def test_close_kills_the_shell_and_everything_it_started(
    backend: DockerBackend, sandbox: SandboxHandle, terminal: Screen
) -> None:
    backend.write_pty(terminal.pty, b"(setsid sleep 600 &) ; sleep 601 & echo started-$((2+2))\r")
    terminal.until("started-4")
    assert "sleep 60" in run(backend, sandbox, "ps -eo args").out
    backend.close_pty(terminal.pty)
    terminal.until_closed()
    assert "sleep 60" not in run(backend, sandbox, "ps -eo args").out


def test_terminal_processes_are_not_leftovers_of_finished_commands(
    backend: DockerBackend, sandbox: SandboxHandle, terminal: Screen
) -> None:
    backend.write_pty(terminal.pty, b"sleep 602 & echo bg-$((2+2))\r")
    terminal.until("bg-4")
    assert backend.leftover_processes(sandbox) == []


def test_a_dropped_connection_ends_the_terminal(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    pty = backend.open_pty(sandbox, f"term-{uuid.uuid4().hex[:8]}", rows=24, cols=80)
    screen = Screen(backend, pty)
    backend.write_pty(pty, b"sleep 603 & echo bg-$((2+2))\r")
    screen.until("bg-4")
    pty.channel.close()  # type: ignore[attr-defined]  # the worker holding it died
    deadline = time.monotonic() + 20
    while "sleep 603" in run(backend, sandbox, "ps -eo args").out:
        assert time.monotonic() < deadline, "the terminal outlived its connection"


def test_bad_sizes_and_ids_are_refused(backend: DockerBackend, sandbox: SandboxHandle,
                                       terminal: Screen) -> None:
    for rows, cols in ((0, 80), (24, 0), (501, 80), (24, 1001)):
        with pytest.raises(SandboxError, match="terminal size") as info:
            backend.open_pty(sandbox, "term-x", rows=rows, cols=cols)
        assert info.value.permanent
        with pytest.raises(SandboxError, match="terminal size"):
            backend.resize_pty(terminal.pty, rows, cols)
    with pytest.raises(SandboxError, match="invalid command id"):
        backend.open_pty(sandbox, "../x", rows=24, cols=80)
    with pytest.raises(SandboxError, match="already running"):
        _reopen_on_same_runner(backend, terminal.pty)
    # The terminal still works.
    backend.write_pty(terminal.pty, b"echo still-$((1+1))\r")
    terminal.until("still-2")


def _reopen_on_same_runner(backend: DockerBackend, pty: Pty) -> None:
    """Ask the terminal's own runner to open the same id again (only it knows the id)."""
    backend._pty_send(pty, {"op": "pty_open", "id": pty.terminal_id, "rows": 24, "cols": 80})
    conn = pty.channel
    deadline = time.monotonic() + 10
    while True:
        f = conn.read_frame(deadline)  # type: ignore[attr-defined]
        if f.kind == b"R" and f.id == pty.terminal_id and "error" in f.message:
            raise SandboxError(str(f.message["error"]), permanent=True)
