"""The notebook page: the session's cells folded from their events, and the HTML that applies
one event to an open page.

The page shows the most recent ``PAGE_CELLS`` cells as of the session's ``last_seq``; older
cells come a page at a time as the reader scrolls up (``notebook_view(before=...)``), each
page folded as of the seq the browser has applied, so the websocket continues exactly where
the render stops. ``render_event`` produces the same fragment for every viewer: controls a
reviewer may not use carry the ``writer-only`` class and the page hides them by its role.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.db.models import Q, Subquery
from django.template.loader import get_template, render_to_string

from agentide.events import registry
from agentide.events.log import event_message
from agentide.events.models import Event
from agentide.sandboxes import services as sandboxes
from agentide.sessions.models import Cell, Session

log = logging.getLogger(__name__)

PAGE_CELLS = 50
CELL_EVENTS = (
    registry.CELL_STARTED,
    registry.CELL_OUTPUT,
    registry.CELL_CANCEL_REQUESTED,
    registry.CELL_FINISHED,
    registry.CELL_CHECKPOINT,
)


@dataclass
class CellView:
    """What the page shows of one cell, folded from its events."""

    id: int
    position: int
    kind: str
    source: str
    author: str
    author_initials: str
    created_at: str
    imported: bool = False
    status: str = Cell.Status.QUEUED
    outcome: str = ""
    exit_code: int | None = None
    duration_ms: int | None = None
    error: str = ""
    cancel_requested: bool = False
    output_chars: int = 0
    truncated: bool = False
    output_parts: list[str] = field(default_factory=list)
    output_sgr: str = ""
    # The payloads of the cell's ``cell.checkpoint`` events, by phase (before / after).
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return "".join(self.output_parts)

    @property
    def is_active(self) -> bool:
        return self.status in (Cell.Status.QUEUED, Cell.Status.RUNNING)

    def apply(self, message: dict[str, Any]) -> None:
        """Fold one event message of this cell into the view."""
        payload = message["payload"]
        kind = message["type"]
        if kind == registry.CELL_OUTPUT:
            if not self.output_parts:
                self.output_sgr = payload.get("sgr", "")
            self.output_parts.append(payload.get("text", ""))
        elif kind == registry.CELL_STARTED:
            self.status = Cell.Status.RUNNING
        elif kind == registry.CELL_CANCEL_REQUESTED:
            self.cancel_requested = True
        elif kind == registry.CELL_CHECKPOINT:
            self.checkpoints[payload["phase"]] = payload
        elif kind == registry.CELL_FINISHED:
            self.status = payload["status"]
            self.outcome = payload.get("outcome", "")
            self.exit_code = payload.get("exit_code")
            self.duration_ms = payload.get("duration_ms")
            self.error = payload.get("error", "")
            self.output_chars = payload.get("output_chars", 0)
            self.truncated = payload.get("truncated", False)

    @classmethod
    def from_created(cls, message: dict[str, Any]) -> CellView:
        payload = message["payload"]
        return cls(
            id=payload["cell_id"],
            position=payload["position"],
            kind=payload["kind"],
            source=payload["source"],
            author=message["actor"] or message.get("imported_actor", ""),
            author_initials=message["actor_initials"]
            or message.get("imported_actor", "")[:2].upper(),
            created_at=message["created_at"],
            imported=bool(message.get("imported")),
            status=payload.get("status", Cell.Status.QUEUED),
            error=payload.get("error", ""),
        )


@dataclass
class NotebookView:
    """Cells of the notebook as of event ``last_seq``: the page renders this, then the
    websocket streams events after ``last_seq``. ``older`` is the seq of the first shown
    cell's ``cell.created`` when cells before it exist (the next page up), else None."""

    last_seq: int
    title: str
    cells: list[CellView]
    older: int | None = None
    # Per-render caches of tags that fold a whole page in one query (agent steps, comments).
    extras: dict[str, Any] = field(default_factory=dict)


def notebook_view(
    session: Session,
    *,
    up_to: int | None = None,
    before: int | None = None,
    limit: int = PAGE_CELLS,
) -> NotebookView:
    """The last ``limit`` cells created before event ``before`` (all when None), folded up
    to event ``up_to`` (the ``last_seq`` of the caller's ``session`` row when None: load it
    right before, as the access helper does).

    One query whatever the number of cells or events: the page's cells' events, those of
    the cell before them (to know whether there is an older page), their agents' events
    (kept in ``extras["agent_rows"]`` for ``{% agent_steps %}``) and their comments'
    ``annotation.added`` events (so a page without comments asks for none).
    """
    last_seq = session.last_seq if up_to is None else min(session.last_seq, up_to)
    created = Event.objects.filter(
        session_id=session.pk, type=registry.CELL_CREATED, seq__lte=last_seq
    )
    if before is not None:
        created = created.filter(seq__lt=before)
    page = created.order_by("-seq").values("cell_id")[: limit + 1]
    events = (
        Event.objects.filter(
            Q(type__in=(registry.CELL_CREATED, *CELL_EVENTS, registry.ANNOTATION_ADDED))
            | Q(type__startswith=registry.AGENT_PREFIX),
            session_id=session.pk,
            cell_id__in=Subquery(page),
            seq__lte=last_seq,
        )
        .select_related("actor")
        .order_by("seq")
    )
    cells: dict[int, CellView] = {}
    firsts: list[int] = []  # seq of each cell's cell.created, oldest first
    commented = False
    agent_rows: list[tuple[int, int, str, dict[str, Any]]] = []
    for event in events.iterator(chunk_size=2000):
        if event.type == registry.CELL_CREATED:
            cell = CellView.from_created(event_message(event))
            cells[cell.id] = cell
            firsts.append(event.seq)
        elif event.type == registry.ANNOTATION_ADDED:
            commented = True
        elif event.type.startswith(registry.AGENT_PREFIX) and event.cell_id is not None:
            agent_rows.append((event.cell_id, event.seq, event.type, event.payload))
        elif event.cell_id in cells:
            cells[event.cell_id].apply({"type": event.type, "payload": event.payload})
    shown = list(cells.values())
    older = None
    if len(shown) > limit:
        shown, older = shown[1:], firsts[1]
    view = NotebookView(last_seq=last_seq, title=session.title, cells=shown, older=older)
    view.extras["agent_rows"] = agent_rows
    if not commented:
        # Read by ``{% cell_comments %}``: nothing to fetch for this page.
        view._comments_by_cell = {}  # type: ignore[attr-defined]
    return view


# --- the sandbox as the notebook shows it ---------------------------------------------------------

SANDBOX_LABELS = {
    "none": "No sandbox yet",
    "pooled": "Sandbox starting…",
    "creating": "Sandbox starting…",
    "starting": "Sandbox starting…",
    "running": "Sandbox running",
    "stopped": "Sandbox stopped",
    "destroyed": "Sandbox removed",
    "missing": "Sandbox missing",
    "error": "Sandbox failed",
}


def sandbox_summary(
    session: Session, *, stats: bool = False, state: str | None = None
) -> dict[str, Any]:
    """The session's sandbox state for the header: ``{"state", "label", "stats"}``.

    ``state`` overrides the database (a ``sandbox.state`` event being rendered). Stats
    (CPU %, memory) are asked of the engine only when requested and the sandbox runs;
    engine trouble shows as missing stats, never as an error page.
    """
    if state is None:
        state = sandboxes.sandbox_state(session)
    summary: dict[str, Any] = {
        "state": state,
        "label": SANDBOX_LABELS.get(state, f"Sandbox {state}"),
        "stats": None,
    }
    if stats and state == "running":
        try:
            summary["stats"] = sandboxes.sandbox_stats(session)
        except Exception:
            log.info("stats of the sandbox of session %s unavailable", session.pk, exc_info=True)
    return summary


# --- live fragments -------------------------------------------------------------------------------

FRAGMENTS = (
    "sessions/_event.html",
    "sessions/_cell.html",
    "sessions/_cell_state.html",
    "sessions/_cell_foot.html",
    "sessions/_title.html",
    "sessions/_sandbox.html",
    "sessions/_presence.html",
)

# Events whose fragments are pure templates over the event's own data. Anything else (a new
# cell, whose fragment other apps extend with tags that query the database; agent events)
# may query the database, so an async caller renders it in a thread.
PURE_EVENTS = frozenset(
    {
        registry.CELL_OUTPUT,
        registry.CELL_STARTED,
        registry.CELL_CANCEL_REQUESTED,
        registry.CELL_FINISHED,
        registry.SESSION_RENAMED,
        registry.SANDBOX_STATE,
    }
)


def reads_database(message: dict[str, Any]) -> bool:
    """Whether rendering ``message`` may query the database."""
    return message["type"] not in PURE_EVENTS


def load_fragments() -> None:
    """Compile the fragments the consumer renders (and import their tag libraries) now,
    so the first live event never pays for it inside the event loop."""
    for name in FRAGMENTS:
        get_template(name)


class EventRenderer(Protocol):
    def __call__(self, message: dict[str, Any], *, session_id: int) -> str: ...


# Renderers of the event types other apps own (agent steps, comments), by type: each app
# registers its own in ``AppConfig.ready``, so this layer never imports the apps above it.
_renderers: dict[str, EventRenderer] = {}


def register_renderer(types: Iterable[str], render: EventRenderer) -> None:
    """Have ``render(message, session_id=...)`` produce the live HTML of events of ``types``."""
    for kind in types:
        _renderers[kind] = render


def render_event(message: dict[str, Any], *, session_id: int) -> str:
    """The HTML (hx-swap-oob fragments) that applies one event to an open session page, the
    same for every viewer: controls only writers may use are marked ``writer-only``."""
    kind = message["type"]
    payload = message["payload"]
    context: dict[str, Any] = {
        "event": message,
        "session_id": session_id,
        "live": True,
        "oob": True,
        "dom_cap": settings.NOTEBOOK_DOM_OUTPUT_CHARS,
        "sgr": payload.get("sgr", ""),
    }
    if kind == registry.CELL_CREATED:
        context["cell"] = CellView.from_created(message)
    elif kind == registry.CELL_STARTED:
        context["state"] = {"id": message["cell_id"], "status": "running"}
    elif kind == registry.CELL_CANCEL_REQUESTED:
        context["state"] = {"id": message["cell_id"], "status": "running", "cancel_requested": True}
    elif kind == registry.CELL_FINISHED:
        context["state"] = {"id": message["cell_id"], **payload}
    elif kind == registry.SESSION_RENAMED:
        context["title"] = payload.get("title", "")
    elif kind == registry.SANDBOX_STATE:
        context["sandbox"] = sandbox_summary(
            Session(pk=session_id), state=payload.get("state", "")
        )
    elif kind in _renderers:
        return _renderers[kind](message, session_id=session_id)
    elif kind != registry.CELL_OUTPUT:
        return ""
    return render_to_string("sessions/_event.html", context)


def render_presence(session_id: int, viewers: list[Any]) -> str:
    return render_to_string(
        "sessions/_presence.html", {"viewers": viewers, "oob": True, "session_id": session_id}
    )
