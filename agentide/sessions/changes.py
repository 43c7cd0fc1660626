"""What cells changed in /workspace, as the notebook and the transcript show it: the
"Files changed" summary of a cell (from the checkpoints its ``cell.checkpoint`` events name),
the diff of one cell bounded for a page, and the live fragment of a checkpoint event.

The checkpoints themselves (store, diff, restore) are ``agentide.sandboxes.checkpoints``;
restores run as cells (``execution.submit_cell(..., "restore", <checkpoint id>)``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import cache
from django.template.loader import render_to_string

from agentide.events import registry
from agentide.events.models import Event
from agentide.sandboxes import checkpoints
from agentide.sandboxes.models import Checkpoint
from agentide.sessions.models import Cell

BEFORE = Checkpoint.Phase.BEFORE.value
AFTER = Checkpoint.Phase.AFTER.value
# A diff shows at most this many files per list (added, removed, changed), this many
# characters of each text diff and of all of them; the rest is counted, not shown.
MAX_DIFF_FILES = 200
MAX_TEXT_BYTES = 32 * 1024
MAX_TOTAL_TEXT_BYTES = 256 * 1024
# Counts of a pair of checkpoints never change: cached by their ids.
COUNTS_TTL_S = 24 * 3600


@dataclass
class FileChanges:
    """A cell's checkpoints and the counts of files its run added, removed and changed."""

    cell_id: int
    kind: str = ""
    before: int | None = None
    after: int | None = None
    added: int = 0
    removed: int = 0
    changed: int = 0
    error: str = ""

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    @property
    def total(self) -> int:
        return self.added + self.removed + self.changed


def counts(before: Checkpoint | None, after: Checkpoint | None) -> tuple[int, int, int]:
    """(added, removed, changed) from checkpoint ``before`` to ``after`` (0s when one is
    missing, e.g. pruned or named by an imported log, or they are the same)."""
    if before is None or after is None or before.pk == after.pk:
        return (0, 0, 0)
    key = f"checkpoint-counts:{before.pk}:{after.pk}"
    cached = cache.get(key)
    if cached is not None:
        added, removed, changed = cached
        return (added, removed, changed)
    diff = checkpoints.diff_checkpoints(before, after, max_text_bytes=0, max_total_text_bytes=0)
    found = (len(diff.added), len(diff.removed), len(diff.changed))
    cache.set(key, found, COUNTS_TTL_S)
    return found


def own_checkpoints(
    session_id: int, events: Iterable[dict[str, dict[str, Any]]]
) -> dict[int, Checkpoint]:
    """The checkpoints these cells' ``cell.checkpoint`` payloads (by phase) name that are
    the session's own, by id, in one query."""
    named = {
        c for payloads in events for payload in payloads.values()
        if isinstance(c := payload.get("checkpoint"), int) and not isinstance(c, bool)
    }
    if not named:
        return {}
    return {c.pk: c for c in Checkpoint.objects.filter(session_id=session_id, pk__in=named)}


def file_changes(
    session_id: int,
    cell_id: int,
    kind: str,
    events: dict[str, dict[str, Any]],
    *,
    own: dict[int, Checkpoint] | None = None,
) -> FileChanges:
    """The summary of a cell from the payloads of its ``cell.checkpoint`` events, by phase.
    Only the session's own checkpoints count (an imported log may name others): ``own``
    (``own_checkpoints``) when the caller has them (a page, for all its cells at once)."""
    if own is None:
        own = own_checkpoints(session_id, [events])
    before = own.get(events.get(BEFORE, {}).get("checkpoint"))  # type: ignore[arg-type]
    after = own.get(events.get(AFTER, {}).get("checkpoint"))  # type: ignore[arg-type]
    changes = FileChanges(
        cell_id=cell_id,
        kind=kind,
        before=before.pk if before else None,
        after=after.pk if after else None,
        error=str(
            events.get(AFTER, {}).get("error") or events.get(BEFORE, {}).get("error") or ""
        ),
    )
    changes.added, changes.removed, changes.changed = counts(before, after)
    return changes


@dataclass
class CellDiff:
    """The diff of one cell for a page: at most ``MAX_DIFF_FILES`` entries per list."""

    changes: FileChanges
    added: list[Any] = field(default_factory=list)
    removed: list[Any] = field(default_factory=list)
    changed: list[Any] = field(default_factory=list)
    left_out: int = 0
    missing: str = ""


def logged_checkpoints(session_id: int, cell_id: int) -> dict[str, dict[str, Any]]:
    """The payloads of the cell's ``cell.checkpoint`` events, by phase: the log is the
    record (an imported session's log names the checkpoints its bundle brought)."""
    events = Event.objects.filter(
        session_id=session_id, cell_id=cell_id, type=registry.CELL_CHECKPOINT
    ).order_by("seq")
    return {str(e.payload.get("phase", "")): e.payload for e in events}


def cell_diff(
    session_id: int, cell_id: int, kind: str = "", *, max_text_bytes: int | None = None
) -> CellDiff:
    """What cell ``cell_id``'s run changed in /workspace: its before and after checkpoints
    diffed, each list cut at ``MAX_DIFF_FILES`` (``left_out`` counts the rest), each text
    diff at ``max_text_bytes`` (``MAX_TEXT_BYTES`` by default). ``missing`` says why there
    is nothing to show."""
    logged = logged_checkpoints(session_id, cell_id)
    own = own_checkpoints(session_id, [logged])
    before = own.get(logged.get(BEFORE, {}).get("checkpoint"))  # type: ignore[arg-type]
    after = own.get(logged.get(AFTER, {}).get("checkpoint"))  # type: ignore[arg-type]
    changes = FileChanges(
        cell_id=cell_id,
        kind=kind,
        before=before.pk if before else None,
        after=after.pk if after else None,
    )
    if before is None or after is None:
        return CellDiff(changes, missing="No checkpoints of this cell's files are kept.")
    text_bytes = MAX_TEXT_BYTES if max_text_bytes is None else max_text_bytes
    # No text wanted (exports list paths only): no text diff is computed at all.
    total = MAX_TOTAL_TEXT_BYTES if text_bytes else 0
    diff = checkpoints.diff_checkpoints(
        before, after, max_text_bytes=text_bytes, max_total_text_bytes=total
    )
    changes.added, changes.removed, changes.changed = (
        len(diff.added), len(diff.removed), len(diff.changed)
    )
    shown = CellDiff(
        changes,
        added=list(diff.added)[:MAX_DIFF_FILES],
        removed=list(diff.removed)[:MAX_DIFF_FILES],
        changed=list(diff.changed)[:MAX_DIFF_FILES],
    )
    shown.left_out = changes.total - len(shown.added) - len(shown.removed) - len(shown.changed)
    return shown


def checkpoint_origin(session_id: int, source: str) -> str:
    """What a restore cell's checkpoint (its ``source``, an id) was taken for, e.g.
    "before cell #3"; "" when it is not one of the session's."""
    try:
        checkpoint_id = int(source)
    except ValueError:
        return ""
    checkpoint = (
        Checkpoint.objects.filter(session_id=session_id, pk=checkpoint_id)
        .select_related("cell")
        .first()
    )
    if checkpoint is None:
        return ""
    if checkpoint.cell is not None and checkpoint.phase:
        return f"{checkpoint.phase} cell #{checkpoint.cell.position}"
    return checkpoint.reason


def render_checkpoint_event(message: dict[str, Any], *, session_id: int) -> str:
    """The live fragment of a ``cell.checkpoint`` event: the cell's restore control once its
    "before" checkpoint exists, its "Files changed" summary once its "after" one does."""
    payload = message["payload"]
    cell_id = message.get("cell_id")
    if cell_id is None or payload.get("phase") not in (BEFORE, AFTER):
        return ""
    kind = Cell.objects.filter(pk=cell_id).values_list("kind", flat=True).first() or ""
    phase = payload["phase"]
    events = logged_checkpoints(session_id, cell_id) if phase == AFTER else {}
    events[phase] = payload
    context = {
        "files": file_changes(session_id, cell_id, kind, events),
        "session_id": session_id,
        "live": True,
        "oob": True,
    }
    template = "sessions/_cell_files.html" if phase == AFTER else "sessions/_cell_restore.html"
    return render_to_string(template, context)


CHECKPOINT_TYPES = (registry.CELL_CHECKPOINT,)
