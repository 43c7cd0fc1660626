"""Terminal features that rest on the kernel's PTY line discipline: signal characters (^C)
and end-of-file (^D) after a large paste.

Under runc only: gVisor's PTY line discipline (as installed here) echoes ^C raw instead of
signalling the foreground group, and does not deliver ^D as end-of-file, so these are
properties of the runtime, not of the runner. The rest of the terminal is tested under both
runtimes (test_terminal_backend.py).
"""

from __future__ import annotations

import pytest
from sandbox_support import Screen


@pytest.fixture(scope="module")
def sandbox_runtime() -> str:
    return ""  # runc, the engine's default


def test_ctrl_c_interrupts_the_foreground_program(terminal: Screen) -> None:
    backend, pty = terminal.backend, terminal.pty
    # The program says when it runs: by then the shell has made it the foreground group
    # (a ^C sent before that would reach the shell instead).
    backend.write_pty(pty, b"sh -c 'echo fg-$((3*3)); exec sleep 300'; echo slept\r")
    terminal.until("fg-9")
    backend.write_pty(pty, b"\x03")
    # The line discipline took it (and flushed pending input); gVisor echoes it raw.
    terminal.until("^C", "\x03")
    backend.write_pty(pty, b"echo after-$((6*7))\r")
    terminal.until("after-42")
    assert "slept" not in terminal.text().replace("echo slept", "")


def test_large_input_is_delivered_in_order(terminal: Screen) -> None:
    backend, pty = terminal.backend, terminal.pty
    backend.write_pty(pty, b"stty -echo; echo off-$((1+1)); cat > /tmp/big.txt\r")
    terminal.until("off-2")
    payload = b"".join(b"%06d\n" % i for i in range(30000))  # 210 KB: several requests
    backend.write_pty(pty, payload)
    backend.write_pty(pty, b"\x04")
    backend.write_pty(pty, b"stty echo; echo lines=$(wc -l < /tmp/big.txt) "
                           b"last=$(tail -1 /tmp/big.txt)\r")
    text = terminal.until("last=029999")
    assert "lines=30000" in text
