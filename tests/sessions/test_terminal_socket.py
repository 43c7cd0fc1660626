"""The terminal over the session websocket: the real ASGI stack and channel layer, a real
Celery worker pumping a real sandbox's PTY."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentide.sandboxes import services as sandboxes
from agentide.sessions import consumers, terminals
from agentide.sessions.models import Session
from tests.sessions.test_consumers import Socket, loop, open_socket  # noqa: F401 - loop
from tests.support import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def destroy_sandboxes() -> Iterator[None]:
    yield
    for session in Session.objects.all():
        if terminals.is_running(session.pk):
            terminals.send_close(session.pk, session.created_by_id)
            wait_until(lambda s=session: not terminals.is_running(s.pk), what="the pump to stop")
        sandboxes.destroy_sandbox(session)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def until(socket: Socket, predicate: Callable[[dict], bool], timeout: float = 60) -> dict:
    """Receive frames until one matches."""
    while True:
        frame = socket.receive(timeout)
        if predicate(frame):
            return frame


class Screen:
    """What a page would show: the reset, then output from the offset it has."""

    def __init__(self, socket: Socket) -> None:
        self.socket = socket
        reset = until(socket, lambda f: f["type"] == "term.reset")
        self.data = bytearray(base64.b64decode(reset["data"]))
        self.end = reset["end"]
        self.typing: list[str] = []

    def apply(self, frame: dict) -> None:
        if frame["type"] == "term.reset":
            self.data = bytearray(base64.b64decode(frame["data"]))
            self.end = frame["end"]
        elif frame["type"] == "term.output":
            data = base64.b64decode(frame["data"])
            assert frame["start"] == self.end, "each byte once, in order"
            self.data += data
            self.end += len(data)
        elif frame["type"] == "term.typing":
            self.typing.append(frame["name"])

    def until(self, needle: bytes, timeout: float = 60) -> bytes:
        while needle not in self.data:
            self.apply(self.socket.receive(timeout))
        return bytes(self.data)

    def until_typing(self, timeout: float = 60) -> list[str]:
        """Frames until someone is said to be typing (it may come after the echo)."""
        while not self.typing:
            self.apply(self.socket.receive(timeout))
        return self.typing


@pytest.fixture
def opened(personas: Any, session: Any, celery_worker: Any) -> Iterator[tuple[Socket, Screen]]:
    socket = open_socket(personas.member, session)
    assert socket.connect()[0]
    screen = Screen(socket)
    socket.send({"type": "term.open", "rows": 24, "cols": 80})
    socket.send({"type": "term.input", "data": b64(b"echo ready-$((1+1))\r")})
    screen.until(b"ready-2", timeout=90)
    yield socket, screen
    socket.close()


def test_a_member_types_and_everyone_sees_the_same_output(personas, session, opened):
    _, screen = opened
    other = open_socket(personas.owner, session)
    assert other.connect()[0]
    other_screen = Screen(other)
    other.send({"type": "term.input", "data": b64(b"echo shared-$((20+1))\r")})
    screen.until(b"shared-21")
    other_screen.until(b"shared-21")
    assert screen.until_typing() == [personas.owner.username]  # "owner is typing"
    assert other_screen.typing == []  # not told about itself
    other.close()


def test_a_reviewers_input_is_refused(personas, session, opened):
    socket, _screen = opened
    reviewer = open_socket(personas.reviewer, session)
    assert reviewer.connect()[0]
    watch = Screen(reviewer)
    for message in ({"type": "term.input", "data": b64(b"echo forged-$((1+1))\r")},
                    {"type": "term.resize", "rows": 10, "cols": 10},
                    {"type": "term.close"}, {"type": "term.open", "rows": 5, "cols": 5}):
        reviewer.send(message)
        error = until(reviewer, lambda f: f["type"] == "term.error")
        assert error["message"] == consumers.READ_ONLY_TERMINAL
    socket.send({"type": "term.input", "data": b64(b"echo size=$(stty size) after-$((2+2))\r")})
    text = watch.until(b"after-4")
    assert b"forged-2" not in text and b"size=24 80" in text
    assert terminals.is_running(session.pk)
    reviewer.close()


def test_a_reconnect_shows_each_byte_once(personas, session, opened):
    socket, _screen = opened
    socket.send({"type": "term.input",
                 "data": b64(b"for i in $(seq 1 400); do echo line-$i; done\r")})
    # Reconnect while the output streams.
    again = open_socket(personas.member, session)
    assert again.connect()[0]
    replay = Screen(again)
    text = replay.until(b"line-400\r\n").decode()
    for i in (1, 200, 399, 400):
        assert text.count(f"line-{i}\r\n") == 1
    again.close()


def test_a_tab_that_does_not_ack_is_paused_then_caught_up(personas, session, opened):
    socket, screen = opened
    socket.send({"type": "term.input",
                 "data": b64(b"yes flow | head -c 3000000; echo; echo flowed-$((5+5))\r")})
    # Without acks the server stops after the high-water mark (the output is much larger).
    received = 0
    start = screen.end
    while True:
        frame = socket.receive(30)
        if frame["type"] == "term.output":
            screen.apply(frame)
            received = screen.end - start
            if received > consumers.TERM_HIGH_WATER + 2 * 65536:
                pytest.fail(f"sent {received} unacknowledged bytes")
            if screen.end - start > consumers.TERM_HIGH_WATER - 65536:
                break
    wait_until(lambda: terminals.ring_snapshot(session.pk)[1] - start > 3000000,
               timeout=60, what="the program to finish")
    assert screen.end - start <= consumers.TERM_HIGH_WATER + 2 * 65536
    # Acknowledging everything resumes it: from the ring (or a reset), to the end.
    while b"flowed-10" not in screen.data:
        socket.send({"type": "term.ack", "offset": screen.end})
        screen.apply(socket.receive(30))
    data, _ = terminals.ring_snapshot(session.pk)
    assert len(data) <= terminals.RING_BYTES


def test_malformed_terminal_messages_get_errors(personas, session):
    socket = open_socket(personas.member, session)
    assert socket.connect()[0]
    Screen(socket)
    for message in ({"type": "term.input", "data": "x" * 100000},
                    {"type": "term.input", "data": "not base64!"},
                    {"type": "term.open", "rows": 0, "cols": 80},
                    {"type": "term.resize", "rows": "a", "cols": 80},
                    {"type": "term.nope"}):
        socket.send(message)
        until(socket, lambda f: f["type"] == "term.error")
    assert not terminals.is_running(session.pk)
    socket.close()
