"""The session's shared terminal: one PTY per session, pumped by one Celery task.

The pump (``run_terminal``, on its own queue: ``terminal_queue()``) holds a lease in Redis so
exactly one runs per session; a pump whose worker died stops renewing it, and the next
``request_terminal`` (a page opening the terminal, or typing) starts a new one. The pump:

- reads the PTY's output and appends it to a Redis ring buffer holding the last
  ``RING_BYTES`` bytes with a monotonically increasing end offset (``ring_snapshot``), then
  sends it to the session's channel-layer group as ``term.output`` messages carrying
  (``start`` offset, base64 ``data``), so a page that loads the snapshot (data + end offset)
  drops live bytes below that offset and shows each byte once;
- records what the terminal echoed as ``terminal.output`` events, coalesced and capped like
  cell output (``OutputPump`` + ``CappedOutput``): input that was not echoed (a password at
  a no-echo prompt) is never stored;
- records ``terminal.input`` events, one per line entered, attributed to who pressed Enter,
  with the text of that line as the terminal echoed it;
- takes input, resizes and the close from a Redis list (``send_input`` / ``send_resize`` /
  ``send_close``), written by the session's websocket consumers.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import close_old_connections, transaction

from agentide.accounts.models import User
from agentide.events import registry
from agentide.events.log import append_event, group_send, session_group
from agentide.lib.output import CappedOutput, StreamDecoder
from agentide.quotas import services as quotas
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.backends.base import (
    MAX_PTY_COLS,
    MAX_PTY_INPUT,
    MAX_PTY_ROWS,
    Pty,
    SandboxError,
)
from agentide.sessions.execution import OutputPump
from agentide.sessions.models import Session
from agentide.sessions.presence import redis_client

log = logging.getLogger(__name__)

TASK = "agentide.sessions.tasks.run_terminal"
RING_BYTES = 256 * 1024
# A terminal's screen is kept this long after its last output.
RING_KEEP_S = 7 * 86400
LEASE_S = 15
READ_WAIT_S = 1.0
# Input waiting for the pump: past this many messages, more input is refused.
MAX_QUEUED_INPUT = 256
MAX_LINE_CHARS = 2000
DEFAULT_SIZE = (24, 80)
# Typing counts as sandbox activity (the idle reaper leaves the sandbox alone), noted at most
# this often.
TOUCH_EVERY_S = 30.0

_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# Append to the ring and advance its end offset in one step; returns the new end offset.
_APPEND = """
local ring = (redis.call('GET', KEYS[1]) or '') .. ARGV[1]
local cap = tonumber(ARGV[2])
if #ring > cap then ring = string.sub(ring, #ring - cap + 1) end
redis.call('SET', KEYS[1], ring, 'EX', ARGV[3])
local ending = redis.call('INCRBY', KEYS[2], #ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return ending
"""
# Renew a lease only while it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def terminal_queue() -> str:
    """The Celery queue of terminal pumps: long-lived, so never in the way of cell work."""
    return f"{settings.REDIS_PREFIX}.terminal"


def _key(session_id: int, part: str) -> str:
    return f"{settings.REDIS_PREFIX}:term:{int(session_id)}:{part}"


# --- the ring buffer ------------------------------------------------------------------------


def ring_append(session_id: int, data: bytes) -> int:
    """Append output to the session's ring; returns the offset of its first byte."""
    end = int(redis_client().eval(_APPEND, 2, _key(session_id, "ring"), _key(session_id, "end"),
                            data, RING_BYTES, RING_KEEP_S))
    return end - len(data)


def ring_snapshot(session_id: int) -> tuple[bytes, int]:
    """The last ``RING_BYTES`` bytes of the terminal's output and the offset just past
    them (0 for a session whose terminal never printed)."""
    pipe = redis_client().pipeline(transaction=True)
    pipe.get(_key(session_id, "ring"))
    pipe.get(_key(session_id, "end"))
    data, end = pipe.execute()
    return data or b"", int(end or 0)


# What only a running terminal needs; a closed one keeps its ring and end offset (the
# screen a page replays) and nothing else.
_LIVE_PARTS = ("input", "typist", "size")
_PARTS = (*_LIVE_PARTS, "lease", "ring", "end")


def forget_terminal(session_id: int) -> None:
    """Delete every Redis key of the session's terminal (the session is gone). A pump still
    running loses its lease and stops; it deletes what it wrote after this when it ends."""
    redis_client().delete(*(_key(session_id, part) for part in _PARTS))


def is_running(session_id: int) -> bool:
    """Whether a pump holds the session's terminal lease."""
    return bool(redis_client().exists(_key(session_id, "lease")))


# --- requests (from consumers) -----------------------------------------------------------------


def check_size(rows: int, cols: int) -> tuple[int, int]:
    """``(rows, cols)`` when both are within the limits, else ValueError."""
    if not (1 <= rows <= MAX_PTY_ROWS and 1 <= cols <= MAX_PTY_COLS):
        raise ValueError(f"terminal size outside 1..{MAX_PTY_ROWS} x 1..{MAX_PTY_COLS}")
    return rows, cols


def request_terminal(session_id: int, *, rows: int, cols: int) -> None:
    """Make sure the session's terminal runs: start a pump unless one holds the lease (a
    duplicate pump finds the lease taken and returns). Its first size is rows x cols."""
    rows, cols = check_size(rows, cols)
    client = redis_client()
    client.set(_key(session_id, "size"), json.dumps([rows, cols]), ex=86400)
    if client.exists(_key(session_id, "lease")):
        return
    transaction.on_commit(lambda: current_app.send_task(
        TASK, args=[int(session_id)], queue=terminal_queue()))


def _push(session_id: int, message: dict[str, Any]) -> None:
    client = redis_client()
    key = _key(session_id, "input")
    if client.llen(key) >= MAX_QUEUED_INPUT:
        raise ValueError("the terminal is not taking input right now")
    client.rpush(key, json.dumps(message))
    client.expire(key, 3600)


def send_input(session_id: int, user_id: int, data: bytes, *, typist: str = "",
               size: tuple[int, int] | None = None) -> None:
    """Queue bytes typed by ``user_id`` (at most MAX_PTY_INPUT) for the session's terminal,
    starting a pump if none runs.

    Size policy: the terminal takes the size of its active typist. ``typist`` names the
    typing connection and ``size`` its screen: when the typist changes, the terminal is
    resized to the new typist's size first (other viewers letterbox or scroll).
    Raises ValueError when the input is too long or the terminal's queue is full.
    """
    if len(data) > MAX_PTY_INPUT:
        raise ValueError(f"at most {MAX_PTY_INPUT} bytes of input at a time")
    client = redis_client()
    if typist:
        previous = client.getset(_key(session_id, "typist"), typist)
        client.expire(_key(session_id, "typist"), 3600)
        if size is not None and (previous or b"").decode() != typist:
            send_resize(session_id, *size)
    if not client.exists(_key(session_id, "lease")):
        size_now = client.get(_key(session_id, "size"))
        rows, cols = json.loads(size_now) if size_now else (size or DEFAULT_SIZE)
        request_terminal(session_id, rows=rows, cols=cols)
    _push(session_id, {"user": int(user_id), "data": base64.b64encode(data).decode()})


def is_typist(session_id: int, typist: str) -> bool:
    """Whether ``typist`` typed last, or nobody typed yet (whose size the terminal takes)."""
    current = redis_client().get(_key(session_id, "typist"))
    return current is None or current.decode() == typist


def send_resize(session_id: int, rows: int, cols: int) -> None:
    rows, cols = check_size(rows, cols)
    redis_client().set(_key(session_id, "size"), json.dumps([rows, cols]), ex=86400)
    _push(session_id, {"resize": [rows, cols]})


def send_close(session_id: int, user_id: int) -> None:
    _push(session_id, {"close": int(user_id)})


# --- the pump -------------------------------------------------------------------------------


class _Recorder:
    """What the terminal echoed, as coalesced, capped ``terminal.output`` events, and the
    lines entered, as ``terminal.input`` events of whoever pressed Enter."""

    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        self.decoder = StreamDecoder()
        self.capture = CappedOutput(head_chars=settings.NOTEBOOK_OUTPUT_HEAD_CHARS,
                                    tail_chars=settings.NOTEBOOK_OUTPUT_TAIL_CHARS)
        self.live_chars = 0
        self.line = ""
        self.enter_by: int | None = None
        self.pump = OutputPump(self._emit, interval_s=settings.NOTEBOOK_OUTPUT_FLUSH_MS / 1000,
                               max_chars=settings.NOTEBOOK_OUTPUT_FLUSH_CHARS)

    def entered(self, user_id: int) -> None:
        """``user_id`` sent input holding Enter: the next line the terminal ends is theirs."""
        self.enter_by = user_id

    def output(self, data: bytes) -> None:
        text = self.decoder.feed(data)
        self.pump.feed(text)
        self._lines(text)

    def _lines(self, text: str) -> None:
        plain = _CONTROLS.sub("", _ESCAPES.sub("", text).replace("\r", ""))
        *done, rest = plain.split("\n")
        for line in done:
            whole = (self.line + line)[:MAX_LINE_CHARS]
            self.line = ""
            if self.enter_by is not None:
                user_id, self.enter_by = self.enter_by, None
                append_event(self.session_id, registry.TERMINAL_INPUT, {"line": whole},
                             actor=_user(user_id))
        self.line = (self.line + rest)[-MAX_LINE_CHARS:]

    def _emit(self, text: str) -> None:
        self.capture.append(text)
        room = self.capture.head_chars - self.live_chars
        if room <= 0:
            return
        piece = text[:room]
        self.live_chars += len(piece)
        append_event(self.session_id, registry.TERMINAL_OUTPUT, {"text": piece})

    def close(self) -> None:
        self.pump.feed(self.decoder.finish())
        self.pump.close()
        if self.capture.truncated:
            note = f"\n[... {self.capture.omitted_chars} characters omitted ...]\n"
            append_event(self.session_id, registry.TERMINAL_OUTPUT,
                         {"text": note + self.capture.tail, "tail": True})


def _user(user_id: int) -> User | None:
    return User.objects.filter(pk=user_id).first()


def _publish(session_id: int, message: dict[str, Any]) -> None:
    try:
        group_send(session_group(session_id), message)
    except Exception:
        log.warning("publishing %s of session %s failed", message["type"], session_id,
                    exc_info=True)


class _Inputs:
    """Takes the queued input of the session's terminal to its PTY and keeps the lease,
    in a thread of its own; sets ``stopped`` when the lease is lost or a close came."""

    def __init__(self, session: Session, pty: Pty, token: str, recorder: _Recorder) -> None:
        self.session = session
        self.session_id = session.pk
        self.touched_at = 0.0
        self.pty = pty
        self.token = token
        self.recorder = recorder
        self.stopped = threading.Event()
        self.closed_by: int | None = None
        self.thread = threading.Thread(target=self._run, name="terminal-input", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client = redis_client()
        key = _key(self.session_id, "input")
        lease = _key(self.session_id, "lease")
        renew_at = time.monotonic() + LEASE_S / 3
        try:
            while not self.stopped.is_set():
                if time.monotonic() >= renew_at:
                    if not client.eval(_RENEW, 1, lease, self.token, LEASE_S * 1000):
                        log.warning("terminal of session %s lost its lease", self.session_id)
                        self.stop()
                        return
                    renew_at = time.monotonic() + LEASE_S / 3
                item = client.blpop([key], timeout=1)
                if item is None:
                    continue
                self._apply(json.loads(item[1]))
        except Exception:
            log.exception("terminal input of session %s failed", self.session_id)
            self.stop()
        finally:
            close_old_connections()

    def _apply(self, message: dict[str, Any]) -> None:
        if "data" in message:
            data = base64.b64decode(message["data"])
            if b"\r" in data or b"\n" in data:
                self.recorder.entered(int(message["user"]))
            sandboxes.write_terminal(self.pty, data)
            if time.monotonic() - self.touched_at >= TOUCH_EVERY_S:
                self.touched_at = time.monotonic()
                sandboxes.touch_sandbox(self.session)
        elif "resize" in message:
            rows, cols = message["resize"]
            sandboxes.resize_terminal(self.pty, int(rows), int(cols))
        elif "close" in message:
            self.closed_by = int(message["close"])
            self.stop()

    def stop(self) -> None:
        self.stopped.set()
        try:
            sandboxes.close_terminal(self.pty)
        except SandboxError:
            log.info("closing the terminal of session %s failed", self.session_id,
                     exc_info=True)


def run_terminal(session_id: int, *, worker: str) -> str:
    """Run the session's terminal until it closes; returns how it ended. Returns at once
    when another pump holds the lease."""
    client = redis_client()
    token = f"{worker}:{uuid.uuid4().hex}"
    lease = _key(session_id, "lease")
    if not client.set(lease, token, nx=True, px=LEASE_S * 1000):
        return "already running"
    try:
        session = Session.objects.select_related("project").filter(pk=session_id).first()
        if session is None or session.status != Session.Status.ACTIVE:
            return "no session"
        size = client.get(_key(session_id, "size"))
        rows, cols = json.loads(size) if size else DEFAULT_SIZE
        terminal_id = f"term-{session_id}-{uuid.uuid4().hex[:8]}"
        try:
            pty = sandboxes.open_terminal(session, terminal_id, rows=rows, cols=cols,
                                          admission=quotas.sandbox_admission(session))
        except SandboxError as exc:
            append_event(session_id, registry.ERROR,
                         {"message": f"The terminal could not start: {exc}"})
            _publish(session_id, {"type": "term.closed"})
            return "failed"
        return _pump(session, pty, token, rows, cols)
    finally:
        # Input queued for this shell must not reach the next one.
        client.delete(*(_key(session_id, part) for part in _LIVE_PARTS))
        client.eval(_RELEASE, 1, lease, token)
        if not Session.objects.filter(pk=session_id).exists():
            forget_terminal(session_id)  # deleted while the pump ran: ring writes came after
        close_old_connections()


def _pump(session: Session, pty: Pty, token: str, rows: int, cols: int) -> str:
    session_id = session.pk
    append_event(session_id, registry.TERMINAL_OPENED,
                 {"terminal_id": pty.terminal_id, "rows": rows, "cols": cols})
    _publish(session_id, {"type": "term.opened"})
    recorder = _Recorder(session_id)
    inputs = _Inputs(session, pty, token, recorder)
    exit_code: int | None = None
    how = "closed"
    try:
        while True:
            try:
                out = sandboxes.read_terminal(pty, READ_WAIT_S)
            except SandboxError as exc:
                log.warning("terminal of session %s lost: %s", session_id, exc)
                how = "lost"
                break
            if out is None:
                continue
            if out.closed:
                exit_code = out.exit_code
                break
            start = ring_append(session_id, out.data)
            _publish(session_id, {"type": "term.output", "start": start,
                                  "data": base64.b64encode(out.data).decode()})
            recorder.output(out.data)
    finally:
        inputs.stop()
        inputs.thread.join()
        if Session.objects.filter(pk=session_id).exists():  # not deleted under the pump
            recorder.close()
            append_event(session_id, registry.TERMINAL_CLOSED,
                         {"terminal_id": pty.terminal_id, "exit_code": exit_code, "how": how},
                         actor=_user(inputs.closed_by) if inputs.closed_by else None)
        _publish(session_id, {"type": "term.closed"})
    return how
