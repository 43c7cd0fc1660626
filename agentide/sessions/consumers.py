"""The session websocket: live events of one session for one browser tab.

Contract with the browser (static/js/notebook.js):

- connect to ``/ws/sessions/<id>/?last_seq=N`` with N the last seq the page has applied;
- the server answers ``{"type": "events", "first": a, "last": b, "html": ..., "types": [...]}``
  frames whose HTML is hx-swap-oob fragments (``types``: the event types they contain), in
  seq order, each event exactly once per connection:
  first the replay of ``seq > N`` from the database, then live events;
- ``{"type": "html", "html": ...}`` carries fragments outside the log (presence);
- every viewer gets the same bytes: each event is rendered once per process (``frames``),
  whoever watches, and the page hides the controls its role may not use;
- the browser may send ``{"type": "ping"}`` (presence heartbeat), ``{"type": "run", "kind",
  "source"}`` and ``{"type": "cancel", "cell_id"}``; errors come back as
  ``{"type": "error", "message": ...}``.

The session's terminal (``sessions/terminals.py``) rides on the same socket:

- on connect the server sends ``{"type": "term.reset", "data": BASE64, "end": N,
  "running": bool}``: the ring buffer's snapshot, ending at byte offset N; then live
  ``{"type": "term.output", "start": S, "data": BASE64}`` frames, each starting where the
  previous ended (the page drops bytes below the offset it has, so each byte shows once);
  a later ``term.reset`` replaces the screen (after a gap too long for the ring);
- ``{"type": "term.state", "running": bool}`` when the terminal opens or closes, and
  ``{"type": "term.typing", "name": ...}`` when someone else types;
- the browser sends ``term.open`` / ``term.resize`` ``{"rows", "cols"}``, ``term.input``
  ``{"data": BASE64}`` (at most 64 KiB), ``term.close`` (writers only: a reviewer's get
  ``{"type": "term.error", "message": "reviewers cannot type"}``) and ``term.ack``
  ``{"offset": N}`` once it has written the bytes up to N;
- flow control per socket: past TERM_HIGH_WATER unacknowledged bytes the server stops
  sending output to that socket, and at TERM_LOW_WATER it catches up from the ring buffer
  (or resets the screen), so a fast program cannot flood a slow tab nor grow memory.

Access is checked on connect (outsiders are refused) and again on every message: writes need
write access, so reviewers watch but never run or cancel. Every socket also joins its user's
group (``services.user_group``): when a membership is removed or changed, or the account is
deactivated, deleted or gets a new password, ``sessions.signals`` asks it to re-check at once,
and the heartbeat re-checks too. Each check reloads the user and the login session, not what
was true at connect. A socket whose access is gone gets an error frame and close code 4403;
one whose write access changed is closed with 4409 (the page's controls belong to the old
role). On either code the browser reloads the page, which the server answers as it now may.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404

from agentide.accounts.models import Membership
from agentide.events.log import events_after, publish_presence, session_group
from agentide.sandboxes.backends.base import MAX_PTY_INPUT
from agentide.sessions import execution, notebook, presence, services, terminals
from agentide.sessions.models import Session

log = logging.getLogger(__name__)

REPLAY_BATCH = 200
REPLAY_FRAME_CHARS = 512 * 1024
# Presence: one render of the avatars per session and process per window, latest state wins.
PRESENCE_SETTLE_S = 0.25
# Rendered events kept per process for the other viewers of the same session (and replays),
# up to this many characters in all.
FRAME_CACHE_CHARS = 32 * 1024 * 1024
# Close codes: access is gone, or write access changed (the page's controls are stale).
GONE = 4403
ROLE_CHANGED = 4409
# A safety net under the re-check messages, which the channel layer may drop: every socket
# also re-checks on its own this often, whether or not its client sends anything.
ACCESS_RECHECK_S = 60.0
_fragments_loaded = False
# Terminal flow control (bytes sent to a socket and not yet acknowledged by its page).
TERM_HIGH_WATER = 512 * 1024
TERM_LOW_WATER = 128 * 1024
TERM_MAX_INPUT_CHARS = 4 * ((MAX_PTY_INPUT + 2) // 3)  # base64 of MAX_PTY_INPUT bytes
TYPING_EVERY_S = 1.0
READ_ONLY_TERMINAL = "reviewers cannot type"


class SessionConsumer(AsyncJsonWebsocketConsumer):
    session_id: int
    sent_seq: int
    can_write: bool
    group: str
    login_key: str | None
    joined: bool = False
    revoked: bool = False
    presence_pending: bool = False
    presence_again: bool = False
    rechecks: asyncio.Task[None] | None = None
    # The terminal: offset of the next byte this socket gets, bytes the page acknowledged,
    # whether output is paused (flow control), this page's size, last typing notice.
    term_offset: int = -1
    term_acked: int = 0
    term_paused: bool = False
    term_size: tuple[int, int] | None = None
    typing_sent_at: float = 0.0

    async def connect(self) -> None:
        self.session_id = int(self.scope["url_route"]["kwargs"]["session_id"])
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4404)
            return
        self.user = user
        self.login_key = self.scope["session"].session_key
        # Join the user's group before checking access: a change committed after the check
        # reaches this socket, one committed before it fails the check.
        await self.channel_layer.group_add(services.user_group(user.pk), self.channel_name)
        try:
            _, membership = await database_sync_to_async(self._access)()
        except Http404:
            await self.channel_layer.group_discard(
                services.user_group(user.pk), self.channel_name
            )
            await self.close(code=4404)
            return
        global _fragments_loaded
        if not _fragments_loaded:
            # Compiling templates and importing tag libraries takes a while: not in the loop.
            await database_sync_to_async(notebook.load_fragments, thread_sensitive=False)()
            _fragments_loaded = True
        self.can_write = membership.can_write
        self.sent_seq = _last_seq(self.scope.get("query_string", b""))
        self.group = session_group(self.session_id)
        # Join first, then replay: an event committed in between arrives twice and the
        # second copy is dropped by seq; none can fall in a gap.
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.joined = True
        await self.accept()
        self.rechecks = asyncio.get_running_loop().create_task(self._recheck_periodically())
        await self.replay_until(None)
        await self.term_reset()
        try:
            await database_sync_to_async(presence.presence_touch)(
                self.session_id, self.user.pk, self.channel_name
            )
            await database_sync_to_async(publish_presence)(self.session_id)
        except Exception:
            # Presence is a nicety: the stream of events must not depend on it.
            log.warning("presence of %s unavailable", self.channel_name, exc_info=True)

    async def disconnect(self, code: int) -> None:
        if self.rechecks is not None:
            self.rechecks.cancel()
        if not self.joined:
            return
        await self.channel_layer.group_discard(self.group, self.channel_name)
        await self.channel_layer.group_discard(
            services.user_group(self.user.pk), self.channel_name
        )
        try:
            await database_sync_to_async(presence.presence_leave)(
                self.session_id, self.channel_name, self.user.pk
            )
            await database_sync_to_async(publish_presence)(self.session_id)
        except Exception:
            log.warning("presence cleanup of %s failed", self.channel_name, exc_info=True)

    # --- from the browser ------------------------------------------------------------------

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or self.revoked:
            return
        kind = content.get("type")
        try:
            if kind == "ping":
                await self.on_ping()
            elif kind == "run":
                await database_sync_to_async(self._run)(
                    str(content.get("kind", "shell")), str(content.get("source", ""))
                )
            elif kind == "cancel":
                await database_sync_to_async(self._cancel)(int(content.get("cell_id", 0)))
            elif isinstance(kind, str) and kind.startswith("term."):
                try:
                    await self.on_terminal(kind, content)
                except (TypeError, ValueError) as exc:
                    await self.send_json({"type": "term.error", "message": str(exc)[:200]})
            else:
                await self.send_json({"type": "error", "message": "Unknown message."})
        except Http404:
            await self.revoke(GONE)
        except PermissionDenied as exc:
            await self.send_json({"type": "error", "message": str(exc)})
        except ValidationError as exc:
            await self.send_json({"type": "error", "message": " ".join(exc.messages)})
        except (TypeError, ValueError):
            await self.send_json({"type": "error", "message": "Malformed message."})

    async def on_ping(self) -> None:
        if not await self.recheck_access():
            return
        # A dropped message is noticed at the next event; if none comes, here.
        await self.replay_until(None)
        try:
            await database_sync_to_async(presence.presence_touch, thread_sensitive=False)(
                self.session_id, self.user.pk, self.channel_name
            )
            await self.presence_changed({})
        except Exception:
            log.warning("presence of %s unavailable", self.channel_name, exc_info=True)

    # --- the terminal ----------------------------------------------------------------------

    async def on_terminal(self, kind: str, content: dict[str, Any]) -> None:
        if kind == "term.ack":
            await self.term_ack(int(content.get("offset", 0)))
            return
        if kind not in ("term.open", "term.input", "term.resize", "term.close"):
            await self.send_json({"type": "term.error", "message": "Unknown message."})
            return
        if kind == "term.input":
            data = content.get("data")
            if not isinstance(data, str) or len(data) > TERM_MAX_INPUT_CHARS:
                await self.send_json({"type": "term.error", "message": "Input too long."})
                return
        try:
            await database_sync_to_async(self._access)(write=True)
        except PermissionDenied:
            await self.send_json({"type": "term.error", "message": READ_ONLY_TERMINAL})
            return
        if kind in ("term.open", "term.resize"):
            size = (int(content.get("rows", 0)), int(content.get("cols", 0)))
            if kind == "term.open":
                await database_sync_to_async(terminals.request_terminal)(
                    self.session_id, rows=size[0], cols=size[1])
                self.term_size = size
            else:
                await database_sync_to_async(self._resize)(size)
        elif kind == "term.input":
            try:
                raw = base64.b64decode(str(content["data"]), validate=True)
            except (binascii.Error, ValueError):
                await self.send_json({"type": "term.error", "message": "Malformed input."})
                return
            await database_sync_to_async(terminals.send_input)(
                self.session_id, self.user.pk, raw, typist=self.channel_name,
                size=self.term_size)
            now = time.monotonic()
            if now - self.typing_sent_at >= TYPING_EVERY_S:
                self.typing_sent_at = now
                await self.channel_layer.group_send(self.group, {
                    "type": "term.typing", "name": self.user.get_username(),
                    "from": self.channel_name})
        else:
            await database_sync_to_async(terminals.send_close)(self.session_id, self.user.pk)

    def _resize(self, size: tuple[int, int]) -> None:
        terminals.check_size(*size)
        self.term_size = size
        if terminals.is_typist(self.session_id, self.channel_name):
            terminals.send_resize(self.session_id, *size)

    async def term_reset(self) -> None:
        """Send the ring buffer's snapshot; live output continues from its end."""
        data, end = await database_sync_to_async(terminals.ring_snapshot)(self.session_id)
        running = await database_sync_to_async(terminals.is_running)(self.session_id)
        self.term_offset = end
        self.term_acked = end - len(data)
        self.term_paused = False
        await self.send_json({"type": "term.reset", "data": base64.b64encode(data).decode(),
                              "end": end, "running": running})

    async def term_ack(self, offset: int) -> None:
        if self.term_offset < 0:
            return
        self.term_acked = max(self.term_acked, min(offset, self.term_offset))
        if self.term_paused and self.term_offset - self.term_acked <= TERM_LOW_WATER:
            await self.term_catch_up()

    async def term_catch_up(self) -> None:
        """Send what this socket missed (paused, or dropped by the layer) from the ring;
        a reset when the ring no longer holds it."""
        data, end = await database_sync_to_async(terminals.ring_snapshot)(self.session_id)
        first = end - len(data)
        if first > self.term_offset:
            await self.term_reset()
            return
        self.term_paused = False
        missing = data[self.term_offset - first :]
        if missing:
            start, self.term_offset = self.term_offset, end
            await self.send_json({"type": "term.output", "start": start,
                                  "data": base64.b64encode(missing).decode()})

    def _run(self, kind: str, source: str) -> None:
        session, membership = self._access(write=True)
        execution.submit_cell(membership, session, kind, source)

    def _cancel(self, cell_id: int) -> None:
        session, membership = self._access(write=True)
        execution.cancel_cell(membership, session, cell_id)

    def _access(self, *, write: bool = False) -> tuple[Session, Membership]:
        """The session and membership as the database has them now, for the signed-in user
        as it is now (Http404 once either is gone)."""
        self.user = services.signed_in_user(self.user.pk, self.login_key)
        return services.get_session_for_user(self.user, self.session_id, write=write)

    # --- access ----------------------------------------------------------------------------

    async def recheck_access(self) -> bool:
        """Check access again; close the socket and return False when it changed."""
        try:
            _, membership = await database_sync_to_async(self._access)()
        except Http404:
            await self.revoke(GONE)
            return False
        if membership.can_write != self.can_write:
            await self.revoke(ROLE_CHANGED)
            return False
        return True

    async def _recheck_periodically(self) -> None:
        while not self.revoked:
            await asyncio.sleep(ACCESS_RECHECK_S)
            try:
                await self.recheck_access()
            except Exception:
                log.warning("access re-check of %s failed", self.channel_name, exc_info=True)

    async def revoke(self, code: int) -> None:
        """Stop the stream at once: nothing more is sent or accepted on this socket."""
        if self.revoked:
            return
        self.revoked = True
        if code == GONE:
            await self.send_json({"type": "error", "message": "This session is not available."})
        await self.close(code=code)

    # --- from the channel layer ------------------------------------------------------------

    async def access_changed(self, message: dict[str, Any]) -> None:
        """The user's account or one of their memberships changed (``sessions.signals``)."""
        if not self.revoked:
            await self.recheck_access()

    async def session_event(self, message: dict[str, Any]) -> None:
        """One new event of the session (published after its commit)."""
        if self.revoked:
            return
        event = message["event"]
        seq = int(event["seq"])
        if seq <= self.sent_seq:
            return
        if seq > self.sent_seq + 1:
            # The layer dropped something (or replay is behind): fill from the database.
            await self.replay_until(seq)
            return
        html = await frames.render(self.session_id, event)
        await self.send_events(seq, seq, html, [event["type"]])

    async def term_output(self, message: dict[str, Any]) -> None:
        """Bytes the terminal printed (``terminals._pump``), from offset ``start``."""
        if self.revoked or self.term_offset < 0 or self.term_paused:
            return
        start = int(message["start"])
        data = base64.b64decode(message["data"])
        if start + len(data) <= self.term_offset:
            return  # already sent (in the snapshot)
        if start > self.term_offset:
            await self.term_catch_up()  # the layer dropped some
            return
        if self.term_offset - self.term_acked > TERM_HIGH_WATER:
            self.term_paused = True  # resumes from the ring at the low-water mark
            return
        data = data[self.term_offset - start :]
        start = self.term_offset
        self.term_offset = start + len(data)
        await self.send_json({"type": "term.output", "start": start,
                              "data": base64.b64encode(data).decode()})

    async def term_opened(self, message: dict[str, Any]) -> None:
        if not self.revoked:
            await self.send_json({"type": "term.state", "running": True})

    async def term_closed(self, message: dict[str, Any]) -> None:
        if not self.revoked:
            await self.send_json({"type": "term.state", "running": False})

    async def term_typing(self, message: dict[str, Any]) -> None:
        if not self.revoked and message.get("from") != self.channel_name:
            await self.send_json({"type": "term.typing", "name": str(message.get("name", ""))})

    async def presence_changed(self, message: dict[str, Any]) -> None:
        """Someone came or went: send the avatars once the burst has settled.

        Runs beside the message loop (a task), so presence never delays events; the avatars
        are rendered once per session and window in this process (``avatars``) and every
        viewer here gets that render.
        """
        if self.revoked:
            return
        if self.presence_pending:
            # It may have come after that window's render read the viewers: one more.
            self.presence_again = True
            return
        self.presence_pending = True
        asyncio.get_running_loop().create_task(self._send_presence())

    async def _send_presence(self) -> None:
        while True:
            self.presence_again = False
            try:
                html = await avatars.render(self.session_id)
                if not self.revoked:
                    await self.send_json({"type": "html", "html": html})
            except Exception:
                log.info("presence update of %s failed", self.channel_name, exc_info=True)
            if not self.presence_again or self.revoked:
                self.presence_pending = False
                return

    # --- helpers ---------------------------------------------------------------------------

    async def replay_until(self, up_to: int | None) -> None:
        """Send the events after ``sent_seq`` (up to ``up_to``) from the database."""
        while True:
            batch = await database_sync_to_async(self._render_batch)(self.sent_seq, up_to)
            if batch is None:
                return
            first, last, html, types = batch
            await self.send_events(first, last, html, types)

    def _render_batch(
        self, after: int, up_to: int | None
    ) -> tuple[int, int, str, list[str]] | None:
        messages = events_after(self.session_id, after, up_to=up_to, limit=REPLAY_BATCH)
        if not messages:
            return None
        parts: list[str] = []
        size = 0
        for message in messages:
            part = frames.render_sync(self.session_id, message)
            parts.append(part)
            size += len(part)
            if size >= REPLAY_FRAME_CHARS:
                break  # keep frames small; the next batch continues from here
        sent = messages[: len(parts)]
        types = sorted({m["type"] for m in sent})
        return sent[0]["seq"], sent[-1]["seq"], "".join(parts), types

    async def send_events(self, first: int, last: int, html: str, types: list[str]) -> None:
        if self.revoked:
            return
        self.sent_seq = last
        await self.send_json(
            {"type": "events", "first": first, "last": last, "html": html, "types": types}
        )


class Frames:
    """Rendered events of this process, shared by every consumer in it: the first viewer
    of a session to need event N renders it, the others (and replays) reuse that render.

    Bounded by characters (the oldest go first); a render in flight is shared, not
    repeated. Pure fragments render in the loop, the others in a thread.
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.chars = 0
        self.lock = threading.Lock()  # replays keep renders from threads
        self.done: OrderedDict[tuple[int, int], str] = OrderedDict()
        self.pending: dict[tuple[int, int], asyncio.Future[str]] = {}
        self.renders = 0  # how many events this process rendered (for tests and benches)

    def _keep(self, key: tuple[int, int], html: str) -> None:
        with self.lock:
            if key in self.done:
                return
            self.done[key] = html
            self.chars += len(html)
            while self.chars > self.max_chars and self.done:
                _, dropped = self.done.popitem(last=False)
                self.chars -= len(dropped)

    def _render(self, session_id: int, message: dict[str, Any]) -> str:
        self.renders += 1
        return notebook.render_event(message, session_id=session_id)

    def render_sync(self, session_id: int, message: dict[str, Any]) -> str:
        """The event's HTML, from this process's cache or rendered now (from a thread)."""
        key = (session_id, int(message["seq"]))
        html = self.done.get(key)
        if html is None:
            html = self._render(session_id, message)
            self._keep(key, html)
        return html

    async def render(self, session_id: int, message: dict[str, Any]) -> str:
        """The event's HTML, rendered at most once in this process."""
        key = (session_id, int(message["seq"]))
        html = self.done.get(key)
        if html is not None:
            return html
        pending = self.pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        if not notebook.reads_database(message):
            # The hot path (output chunks, cell states): a pure template render in the loop.
            html = self._render(session_id, message)
            self._keep(key, html)
            return html
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        try:
            html = await database_sync_to_async(self._render, thread_sensitive=False)(
                session_id, message
            )
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters (if any) re-raise it
            raise
        else:
            future.set_result(html)
            self._keep(key, html)
            return html
        finally:
            del self.pending[key]


class Avatars:
    """The avatars of each session, rendered once per ``PRESENCE_SETTLE_S`` window in this
    process and handed to every viewer that asked in that window (latest state wins)."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Task[str]] = {}
        self.renders = 0

    async def render(self, session_id: int) -> str:
        task = self.pending.get(session_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._settle_and_render(session_id))
            self.pending[session_id] = task
        return await asyncio.shield(task)

    async def _settle_and_render(self, session_id: int) -> str:
        try:
            await asyncio.sleep(PRESENCE_SETTLE_S)
        finally:
            # Changes from here on start the next window: none is lost.
            del self.pending[session_id]
        viewers = await database_sync_to_async(presence.viewers, thread_sensitive=False)(
            session_id
        )
        self.renders += 1
        return notebook.render_presence(session_id, viewers)


frames = Frames(FRAME_CACHE_CHARS)
avatars = Avatars()


def _last_seq(query_string: bytes) -> int:
    values = parse_qs(query_string.decode("latin-1")).get("last_seq", ["0"])
    try:
        return max(0, int(values[0]))
    except ValueError:
        return 0
