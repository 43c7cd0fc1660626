"""The session websocket through the real ASGI stack (origin check, cookie auth) and the
real Redis channel layer."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from agentide.asgi import application
from agentide.events import log as event_log
from agentide.events import registry
from agentide.sessions import consumers, execution, presence
from tests.support import cookie_for

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")


class Loop:
    """One event loop in a thread for every socket of a test: the consumer's tasks live in
    the loop that started them, while the test body stays plain synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


LOOP: Loop | None = None


@pytest.fixture(autouse=True)
def loop() -> Iterator[Loop]:
    from channels.layers import channel_layers

    global LOOP
    # The layer object is cached per process and bound to the loop that used it first.
    channel_layers.backends = {}
    LOOP = Loop()
    yield LOOP
    LOOP.run(_cleanup())
    LOOP.stop()
    LOOP = None
    channel_layers.backends = {}


async def _cleanup() -> None:
    from channels.db import database_sync_to_async
    from channels.layers import get_channel_layer
    from django.db import connections

    await database_sync_to_async(connections.close_all)()
    layer = get_channel_layer()
    if layer is not None and hasattr(layer, "close_pools"):
        await layer.close_pools()


class Socket:
    """A synchronous face on WebsocketCommunicator for readable tests."""

    def __init__(self, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        assert LOOP is not None
        self.loop = LOOP

        async def make() -> WebsocketCommunicator:
            return WebsocketCommunicator(application, path, headers=headers)

        self.comm = self.loop.run(make())

    def connect(self) -> tuple[bool, Any]:
        return self.loop.run(self.comm.connect(timeout=5))

    def send(self, message: dict) -> None:
        self.loop.run(self.comm.send_json_to(message))

    def receive(self, timeout: float = 5) -> dict:
        return self.loop.run(self.comm.receive_json_from(timeout=timeout))

    def events_until(self, seq: int, timeout: float = 10) -> list[dict]:
        """Receive frames until one ends at ``seq``; return the event frames."""
        frames = []
        while True:
            frame = self.receive(timeout)
            if frame["type"] == "events":
                frames.append(frame)
                if frame["last"] >= seq:
                    return frames

    def close(self) -> None:
        self.loop.run(self.comm.disconnect())


def open_socket(user: Any, session: Any, last_seq: int = 0, origin: tuple = ORIGIN) -> Socket:
    headers = [origin, (b"cookie", cookie_for(user).encode())] if user else [origin]
    return Socket(f"/ws/sessions/{session.pk}/?last_seq={last_seq}", headers)


def seqs(frames: list[dict]) -> list[int]:
    out: list[int] = []
    for frame in frames:
        out.extend(range(frame["first"], frame["last"] + 1))
    return out


def test_it_refuses_outsiders_and_anonymous_users(personas, session):
    for user in (personas.outsider, None):
        socket = open_socket(user, session)
        connected, _ = socket.connect()
        assert not connected


def test_it_refuses_foreign_origins(personas, session):
    socket = open_socket(personas.member, session, origin=(b"origin", b"http://evil.example"))
    connected, _ = socket.connect()
    assert not connected


def test_it_replays_events_after_the_clients_seq_then_streams_live(personas, session, no_tasks):
    member = personas.membership(personas.member)
    for i in range(3):
        execution.submit_cell(member, session, "shell", f"echo {i}")
    socket = open_socket(personas.reviewer, session, last_seq=1)
    assert socket.connect()[0]
    frames = socket.events_until(3)
    assert seqs(frames) == [2, 3]
    assert "echo 1" in frames[0]["html"] and "echo 0" not in "".join(f["html"] for f in frames)
    # Reviewers get the same fragment as everyone: their page hides the writers' controls.
    assert 'class="small cancel writer-only"' in frames[0]["html"]
    execution.submit_cell(member, session, "shell", "echo live")
    [live] = socket.events_until(4)
    assert (live["first"], live["last"]) == (4, 4)
    assert "echo live" in live["html"]
    socket.close()


def test_nothing_is_sent_twice_and_gaps_are_filled_from_the_database(
    personas, session, no_tasks, monkeypatch
):
    socket = open_socket(personas.member, session)
    assert socket.connect()[0]
    event_log.append_event(session.pk, registry.ERROR, {"message": "test"})  # seq 1, delivered live
    assert seqs(socket.events_until(1)) == [1]
    # The layer "drops" seq 2 and 3; seq 4 arrives: the consumer fetches 2..4 itself.
    monkeypatch.setattr(event_log, "publish", lambda sid, message: None)
    event_log.append_event(session.pk, registry.ERROR, {"message": "test"})
    event_log.append_event(session.pk, registry.ERROR, {"message": "test"})
    monkeypatch.undo()
    event_log.append_event(session.pk, registry.ERROR, {"message": "test"})
    assert seqs(socket.events_until(4)) == [2, 3, 4]
    # A duplicate delivery of an old event is dropped.
    message = event_log.events_after(session.pk, 2, up_to=3)[0]
    event_log.publish(session.pk, message)
    event_log.append_event(session.pk, registry.ERROR, {"message": "test"})
    assert seqs(socket.events_until(5)) == [5]
    socket.close()


def test_reviewers_watch_but_cannot_run_or_cancel(personas, session, no_tasks):
    cell = execution.submit_cell(personas.membership(personas.member), session, "shell", "ls")
    socket = open_socket(personas.reviewer, session, last_seq=1)
    assert socket.connect()[0]
    socket.send({"type": "run", "kind": "shell", "source": "rm -rf /workspace"})
    frame = socket.receive()
    while frame["type"] != "error":
        frame = socket.receive()
    assert "read-only" in frame["message"]
    socket.send({"type": "cancel", "cell_id": cell.pk})
    frame = socket.receive()
    while frame["type"] != "error":
        frame = socket.receive()
    assert "read-only" in frame["message"]
    assert session.cells.count() == 1
    socket.close()


def test_members_run_cells_over_the_socket(personas, session, no_tasks):
    socket = open_socket(personas.member, session)
    assert socket.connect()[0]
    socket.send({"type": "run", "kind": "shell", "source": ""})
    frame = socket.receive()
    while frame["type"] != "error":
        frame = socket.receive()
    assert frame["message"] == "Enter a command first."
    socket.send({"type": "run", "kind": "shell", "source": "echo hi"})
    [created] = socket.events_until(1)
    assert "echo hi" in created["html"] and "Cancel" in created["html"]
    socket.close()


def test_presence_shows_who_is_viewing(personas, session):
    first = open_socket(personas.member, session)
    assert first.connect()[0]

    def presence_html(socket: Socket) -> str:
        frame = socket.receive()
        while frame["type"] != "html":
            frame = socket.receive()
        return frame["html"]

    assert "1 viewing" in presence_html(first)
    second = open_socket(personas.reviewer, session)
    assert second.connect()[0]
    html = presence_html(first)
    assert "2 viewing" in html and personas.reviewer.initials in html
    second.close()
    assert "1 viewing" in presence_html(first)
    assert [u.username for u in presence.viewers(session.pk)] == ["member"]
    first.close()
    assert presence.viewers(session.pk) == []


def test_frames_are_json_with_html_fragments(personas, session, no_tasks):
    execution.submit_cell(
        personas.membership(personas.member), session, "note", "**bold** <script>alert(1)</script>"
    )
    socket = open_socket(personas.member, session)
    assert socket.connect()[0]
    [frame] = socket.events_until(1)
    json.dumps(frame)
    assert "<strong>bold</strong>" in frame["html"]
    assert "<script>alert(1)</script>" not in frame["html"]
    assert 'hx-swap-oob="beforeend:#cells"' in frame["html"]
    socket.close()


def test_a_member_removed_from_the_team_is_cut_off_at_the_next_ping(personas, session):
    socket = open_socket(personas.member, session)
    assert socket.connect()[0]
    personas.membership(personas.member).delete()
    socket.send({"type": "ping"})
    frame = socket.receive()
    while frame["type"] != "error":
        frame = socket.receive()
    assert frame["message"] == "This session is not available."
    assert socket.loop.run(socket.comm.receive_output(timeout=5))["type"] == "websocket.close"


def test_a_dropped_last_event_arrives_with_the_next_heartbeat(personas, session, monkeypatch):
    socket = open_socket(personas.member, session)
    assert socket.connect()[0]
    monkeypatch.setattr(event_log, "publish", lambda sid, message: None)
    # The layer "loses" it, and nothing follows.
    event_log.append_event(session.pk, registry.ERROR, {"message": "test"})
    socket.send({"type": "ping"})
    assert seqs(socket.events_until(1)) == [1]
    socket.close()


def test_a_long_replay_comes_in_bounded_frames(personas, session, no_tasks):
    execution.submit_cell(personas.membership(personas.member), session, "shell", "yes")
    cell = execution.claim_next_cell(session.pk)
    for _ in range(60):  # ~1 MB of output
        event_log.append_event(session.pk, "cell.output", {"text": "y\n" * 8192}, cell=cell)
    for _ in range(400):
        event_log.append_event(session.pk, registry.ERROR, {"message": "test"})
    socket = open_socket(personas.reviewer, session)
    assert socket.connect()[0]
    frames = socket.events_until(462)
    assert seqs(frames) == list(range(1, 463))
    assert len(frames) >= 4
    assert all(len(f["html"]) < 600 * 1024 for f in frames)
    socket.close()


def test_the_heartbeat_rechecks_the_account_not_the_user_cached_at_connect(personas, session):
    from agentide.accounts.models import User

    for change in ({"is_active": False}, {"password": "changed-elsewhere"}):
        socket = open_socket(personas.member, session)
        assert socket.connect()[0]
        # A queryset update sends no signal: as if the re-check message had been lost.
        User.objects.filter(pk=personas.member.pk).update(**change)
        socket.send({"type": "run", "kind": "shell", "source": "echo still here"})
        frame = socket.receive()
        while frame["type"] != "error":
            frame = socket.receive()
        assert frame["message"] == "This session is not available."
        close = socket.loop.run(socket.comm.receive_output(timeout=5))
        assert (close["type"], close["code"]) == ("websocket.close", 4403)
        assert session.cells.count() == 0
        User.objects.filter(pk=personas.member.pk).update(
            is_active=True, password=personas.member.password
        )


def test_a_socket_rechecks_on_its_own_when_a_recheck_message_is_lost(
    personas, session, monkeypatch
):
    from agentide.accounts.models import User
    from agentide.sessions import consumers

    monkeypatch.setattr(consumers, "ACCESS_RECHECK_S", 0.2)
    socket = open_socket(personas.member, session)
    assert socket.connect()[0]
    # A queryset update sends no signal: as if the re-check message had been lost.
    User.objects.filter(pk=personas.member.pk).update(is_active=False)
    output = socket.loop.run(socket.comm.receive_output(timeout=10))
    while output["type"] != "websocket.close":
        output = socket.loop.run(socket.comm.receive_output(timeout=10))
    assert output["code"] == 4403


def test_one_render_per_event_whatever_the_number_of_viewers(personas, session, no_tasks):
    member = personas.membership(personas.member)
    execution.submit_cell(member, session, "shell", "echo before")  # seq 1: replayed
    viewers = [personas.member, personas.reviewer, personas.owner] * 4
    sockets = [open_socket(user, session) for user in viewers]
    before = consumers.frames.renders
    for socket in sockets:
        assert socket.connect()[0]
    replays = [socket.events_until(1) for socket in sockets]
    assert consumers.frames.renders - before == 1  # the replay of seq 1, for all 12
    cell = execution.submit_cell(member, session, "shell", "echo live")  # seq 2
    event_log.append_event(  # seq 3: a pure render
        session.pk, registry.CELL_STARTED, {"cell_id": cell.pk, "status": "running"}, cell=cell
    )
    lives = [socket.events_until(3) for socket in sockets]
    assert consumers.frames.renders - before == 3
    # The same bytes for owner, member and reviewer alike.
    assert len({"".join(f["html"] for f in frames) for frames in replays}) == 1
    assert len({"".join(f["html"] for f in frames) for frames in lives}) == 1
    for socket in sockets:
        socket.close()


def test_presence_renders_once_per_window_for_every_viewer(personas, session):
    def presence_html(socket: Socket) -> str:
        frame = socket.receive()
        while frame["type"] != "html":
            frame = socket.receive()
        return frame["html"]

    sockets = [open_socket(user, session) for user in [personas.member, personas.reviewer] * 5]
    before = consumers.avatars.renders
    for socket in sockets:
        assert socket.connect()[0]
    # Ten joins: every viewer gets the avatars of both people...
    for socket in sockets:
        while "2 viewing" not in presence_html(socket):
            pass
    # ... from at most a render or two per join (one window each), not one per viewer per
    # join (55 for ten joins).
    assert consumers.avatars.renders - before <= 20
    for socket in sockets:
        socket.close()
