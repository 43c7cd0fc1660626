"""The terminal under gVisor (runsc), where no runner is used: a TTY ``docker exec`` of its
own whose raw stream the host reads and writes. Its output is only terminal output and its
exit code comes from the engine, so a process in the sandbox has no frames to forge.

gVisor's line discipline echoes ^C instead of signalling (test_terminal_line_discipline.py
runs under runc only): not tested here.
"""

from __future__ import annotations

import json
import struct
import uuid

import pytest
from sandbox_support import Screen, run

from agentide.sandboxes.backends.base import Pty, SandboxError, SandboxHandle
from agentide.sandboxes.backends.docker import DockerBackend

FRAME = struct.Struct(">cIH")


@pytest.fixture(scope="module")
def sandbox_runtime() -> str:
    return "runsc"


def open_terminal(backend: DockerBackend, sandbox: SandboxHandle) -> tuple[Pty, Screen]:
    pty = backend.open_pty(sandbox, f"term-{uuid.uuid4().hex[:8]}", rows=24, cols=80)
    return pty, Screen(backend, pty)


def test_a_terminal_runs_a_login_shell_as_the_sandbox_user_without_a_runner(
    backend: DockerBackend, sandbox: SandboxHandle, terminal: Screen
) -> None:
    # gVisor passes the exec's TTY in from the host: a terminal, but none of its /dev/pts
    # (``tty`` says "not a tty"; docs/terminal.md).
    terminal.backend.write_pty(
        terminal.pty, b"[ -t 0 ] && [ -t 1 ] && t=yes; echo who=$(id -u) tty=$t term=$TERM.\r")
    text = terminal.until("term=xterm-256color.\r\n")
    assert "who=1000 tty=yes term" in text
    assert "python" not in run(backend, sandbox, "ps -eo comm").out  # no runner


def test_it_starts_in_the_sessions_persisted_cwd_and_env_under_the_cells_rules(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    run(backend, sandbox, "mkdir -p /workspace/termdir && cd /workspace/termdir && "
                          "export TERM_TEST_VAR=carried && export LD_PRELOAD=/tmp/x.so")
    pty, screen = open_terminal(backend, sandbox)
    try:
        backend.write_pty(pty, b"echo at=$PWD var=$TERM_TEST_VAR pre=${LD_PRELOAD:-none}.\r")
        text = screen.until("pre=none.\r\n")
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
    with pytest.raises(SandboxError, match="terminal size"):
        backend.resize_pty(pty, 0, 80)


def test_full_screen_programs_run_and_no_echo_input_is_not_echoed(terminal: Screen) -> None:
    backend, pty = terminal.backend, terminal.pty
    backend.write_pty(pty, b"top -b -n1 | head -3; echo top-$((1+1))done\r")
    assert "Tasks:" in terminal.until("top-2done")
    backend.write_pty(pty, b"less /etc/passwd\r")
    terminal.until("/etc/passwd (END)")
    backend.write_pty(pty, b"q")
    backend.write_pty(pty, b"echo after-less-$((1+1))\r")
    terminal.until("after-less-2\r\n")
    backend.write_pty(pty, b"read -p 'name? ' n; echo hello-$n\r")
    terminal.until("\rname? ")
    backend.write_pty(pty, b"ada\r")
    terminal.until("hello-ada")
    backend.write_pty(pty, b"read -s -p 'secret? ' s; echo got-${#s}\r")
    terminal.until("\rsecret? ")
    backend.write_pty(pty, b"hunter2\r")
    assert "hunter2" not in terminal.until("got-7")


def test_printed_runner_frames_are_only_text(terminal: Screen) -> None:
    ident = terminal.pty.terminal_id.encode()
    body = json.dumps({"exit_code": 0}).encode()
    forged = FRAME.pack(b"Q", len(body), len(ident)) + ident + body
    hexed = "".join(f"\\x{b:02x}" for b in forged)
    terminal.backend.write_pty(terminal.pty, f"printf '{hexed}'; echo; echo alive-$((2+5))\r"
                               .encode())
    terminal.until("alive-7\r\n")
    assert not terminal.closed
    assert forged.decode(errors="replace") in terminal.text()


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


def test_the_next_terminal_ends_one_whose_connection_dropped(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    pty, screen = open_terminal(backend, sandbox)
    backend.write_pty(pty, b"sleep 603 & echo bg-$((2+2))\r")
    screen.until("bg-4")
    pty.channel.close()  # type: ignore[attr-defined]  # the worker holding it died
    # A TTY exec outlives its connection; the sandbox's next terminal ends it.
    assert "sleep 603" in run(backend, sandbox, "ps -eo args").out
    again, screen = open_terminal(backend, sandbox)
    try:
        backend.write_pty(again, b"echo new-$((1+1))\r")
        screen.until("new-2")
        assert "sleep 603" not in run(backend, sandbox, "ps -eo args").out
    finally:
        backend.close_pty(again)
        screen.until_closed()
