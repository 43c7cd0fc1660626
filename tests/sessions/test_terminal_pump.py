"""The session's terminal pump end to end: a real Celery worker consuming the terminal queue,
the real Redis (ring buffer, input queue, lease, channel layer) and a Docker sandbox."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from agentide.events import registry
from agentide.events.log import session_group
from agentide.events.models import Event
from agentide.sandboxes import services as sandboxes
from agentide.sessions import terminals
from agentide.sessions.models import Session
from agentide.sessions.services import delete_session
from tests.support import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def destroy_sandboxes() -> Iterator[None]:
    yield
    for session in Session.objects.all():
        sandboxes.destroy_sandbox(session)


def events(session: Any, type: str) -> list[Event]:
    return list(Event.objects.filter(session=session, type=type).order_by("seq"))


def screen(session: Any) -> str:
    return terminals.ring_snapshot(session.pk)[0].decode(errors="replace")


def shown(session: Any, needle: str, timeout: float = 60) -> str:
    return wait_until(lambda: needle in screen(session) and screen(session), timeout=timeout,
                      what=f"the terminal to show {needle!r}")


@pytest.fixture
def terminal(personas: Any, session: Any, celery_worker: Any) -> Iterator[Any]:
    """The session's terminal, open, its login shell ready."""
    terminals.request_terminal(session.pk, rows=24, cols=80)
    try:
        wait_until(lambda: events(session, registry.TERMINAL_OPENED), timeout=90,
                   what="the terminal to open")
    except AssertionError:
        print(celery_worker.output()[-5000:])
        raise
    terminals.send_input(session.pk, personas.member.pk, b"echo ready-$((1+1))\r")
    shown(session, "ready-2")
    yield session
    if terminals.is_running(session.pk):
        terminals.send_close(session.pk, personas.member.pk)
        wait_until(lambda: not terminals.is_running(session.pk), what="the pump to stop")


def test_typed_commands_run_and_are_recorded_with_who_typed_them(
    personas: Any, terminal: Any
) -> None:
    terminals.send_input(terminal.pk, personas.owner.pk, b"echo typed-$((40+2))\r")
    shown(terminal, "typed-42")

    def recorded() -> list[Event]:
        return [e for e in events(terminal, registry.TERMINAL_INPUT)
                if "echo typed-$((40+2))" in e.payload["line"]]

    (event,) = wait_until(recorded, what="the input line event")
    assert event.actor_id == personas.owner.pk
    wait_until(lambda: "typed-42" in "".join(
        e.payload["text"] for e in events(terminal, registry.TERMINAL_OUTPUT)),
        what="the output event")


def test_input_at_a_no_echo_prompt_is_never_stored(personas: Any, terminal: Any) -> None:
    terminals.send_input(terminal.pk, personas.member.pk,
                         b"read -s -p 'pass? ' p; echo len-${#p}\r")
    shown(terminal, "\rpass? ")
    terminals.send_input(terminal.pk, personas.member.pk, b"hunter2-secret\r")
    shown(terminal, "len-14")
    terminals.send_close(terminal.pk, personas.member.pk)
    wait_until(lambda: events(terminal, registry.TERMINAL_CLOSED), what="the close event")
    stored = [e.payload for e in Event.objects.filter(session=terminal)]
    assert "hunter2" not in repr(stored)
    assert "hunter2" not in screen(terminal)


def test_output_goes_live_with_contiguous_offsets_into_a_bounded_ring(
    personas: Any, terminal: Any
) -> None:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(session_group(terminal.pk), channel)
    _, start_end = terminals.ring_snapshot(terminal.pk)
    terminals.send_input(terminal.pk, personas.member.pk,
                         b"yes terminal-line | head -c 800000; echo; echo done-$((1+1))\r")
    received = bytearray()
    expected = start_end
    while b"done-2" not in received:
        message = async_to_sync(layer.receive)(channel)
        if message["type"] != "term.output":
            continue
        data = base64.b64decode(message["data"])
        # Every byte once, in order: each message starts where the previous ended.
        assert message["start"] == expected
        expected += len(data)
        received += data
    data, end = terminals.ring_snapshot(terminal.pk)
    while expected < end:  # the prompt after it
        message = async_to_sync(layer.receive)(channel)
        if message["type"] == "term.output":
            assert message["start"] == expected
            piece = base64.b64decode(message["data"])
            expected += len(piece)
            received += piece
    assert end - start_end >= 800000
    assert len(data) == terminals.RING_BYTES  # bounded: the last 256 KiB only
    # received spans the offsets [start_end, expected): the ring is its tail up to ``end``.
    assert bytes(received[: end - start_end][-len(data):]) == data
    # Recorded like cell output: coalesced into few events, head live, the tail at the end.
    terminals.send_close(terminal.pk, personas.member.pk)
    wait_until(lambda: events(terminal, registry.TERMINAL_CLOSED), what="the close event")
    outputs = events(terminal, registry.TERMINAL_OUTPUT)
    assert len(outputs) < 800000 // 4096
    assert outputs[-1].payload.get("tail") and "done-2" in outputs[-1].payload["text"]
    stored = sum(len(e.payload["text"]) for e in outputs)
    assert stored <= (settings.NOTEBOOK_OUTPUT_HEAD_CHARS + settings.NOTEBOOK_OUTPUT_TAIL_CHARS
                      + 100)


def test_one_pump_per_session(personas: Any, terminal: Any) -> None:
    assert terminals.run_terminal(terminal.pk, worker="second") == "already running"
    terminals.request_terminal(terminal.pk, rows=24, cols=80)
    terminals.send_input(terminal.pk, personas.member.pk, b"echo once-$((3+3))\r")
    shown(terminal, "once-6")
    assert screen(terminal).count("once-6") == 1
    assert len(events(terminal, registry.TERMINAL_OPENED)) == 1


def test_close_ends_the_terminal_and_a_new_one_can_start(personas: Any, terminal: Any) -> None:
    terminals.send_input(terminal.pk, personas.member.pk, b"sleep 700 &\r")
    terminals.send_close(terminal.pk, personas.owner.pk)
    (closed,) = wait_until(lambda: events(terminal, registry.TERMINAL_CLOSED),
                           what="the close event")
    assert closed.actor_id == personas.owner.pk
    wait_until(lambda: not terminals.is_running(terminal.pk), what="the lease to go")
    terminals.request_terminal(terminal.pk, rows=30, cols=100)
    wait_until(lambda: len(events(terminal, registry.TERMINAL_OPENED)) == 2, timeout=60,
               what="a second terminal")
    terminals.send_input(terminal.pk, personas.member.pk,
                         b"echo size=$(stty size) jobs=$(pgrep -c -f 'sleep 700').\r")
    shown(terminal, "size=30 100 jobs=0.")


def test_bad_requests_are_refused(personas: Any, session: Any) -> None:
    with pytest.raises(ValueError, match="terminal size"):
        terminals.request_terminal(session.pk, rows=0, cols=80)
    with pytest.raises(ValueError, match="terminal size"):
        terminals.send_resize(session.pk, 24, 5000)
    with pytest.raises(ValueError, match="bytes of input"):
        terminals.send_input(session.pk, personas.member.pk, b"x" * (64 * 1024 + 1))


def redis_keys_of(session_id: int) -> list[str]:
    """Every key under the test Redis prefix that names the session's id as a whole part
    (between separators: random channel names carry digits inside words)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    pattern = re.compile(rf"(^|[:._-]){session_id}([:._-]|$)")
    return [key.decode() for key in client.scan_iter(f"{settings.REDIS_PREFIX}*")
            if pattern.search(key.decode().removeprefix(settings.REDIS_PREFIX))]


def test_a_closed_terminal_keeps_only_its_screen(personas: Any, terminal: Any) -> None:
    terminals.send_resize(terminal.pk, 30, 90)
    terminals.send_input(terminal.pk, personas.member.pk, b"echo kept-$((2+2))\r",
                         typist="tab-1", size=(30, 90))
    shown(terminal, "kept-4")
    terminals.send_close(terminal.pk, personas.member.pk)
    wait_until(lambda: not terminals.is_running(terminal.pk), what="the pump to stop")
    assert sorted(redis_keys_of(terminal.pk)) == sorted(
        f"{settings.REDIS_PREFIX}:term:{terminal.pk}:{part}" for part in ("ring", "end"))
    assert "kept-4" in screen(terminal)


def test_deleting_the_session_leaves_no_redis_key_of_it(personas: Any, terminal: Any) -> None:
    terminals.send_input(terminal.pk, personas.member.pk, b"echo gone-$((2+3))\r",
                         typist="tab-1", size=(24, 80))
    shown(terminal, "gone-5")
    session_id = terminal.pk
    assert redis_keys_of(session_id)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(session_group(session_id), channel)
    delete_session(personas.membership(personas.owner), Session.objects.get(pk=session_id))
    # The pump writes nothing after it says the terminal closed.
    while async_to_sync(layer.receive)(channel)["type"] != "term.closed":
        pass
    async_to_sync(layer.group_discard)(session_group(session_id), channel)
    wait_until(lambda: redis_keys_of(session_id) == [], what="the pump to clean up")
    assert not Session.objects.filter(pk=session_id).exists()


def test_deleting_a_session_whose_terminal_is_closed_leaves_no_redis_key_of_it(
    personas: Any, terminal: Any
) -> None:
    terminals.send_close(terminal.pk, personas.member.pk)
    wait_until(lambda: not terminals.is_running(terminal.pk), what="the pump to stop")
    assert redis_keys_of(terminal.pk)  # the screen, for replay
    delete_session(personas.membership(personas.owner), Session.objects.get(pk=terminal.pk))
    assert redis_keys_of(terminal.pk) == []
