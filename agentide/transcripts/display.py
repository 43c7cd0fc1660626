"""Comments inside the live session page: the first render and the live fragments.

The notebook's ``render_event`` hands ``annotation.*`` events here; ``_cell.html`` renders
``{% cell_comments cell.id %}``. Both use the same item template.
"""

from __future__ import annotations

from typing import Any

from django.template.loader import render_to_string

from agentide.events import registry
from agentide.events.models import Event
from agentide.transcripts.models import Annotation


def cell_comments(cell_id: int, *, up_to: int | None = None) -> list[Annotation]:
    """The comments on events of cell ``cell_id`` whose ``annotation.added`` has a seq up to
    ``up_to`` (the page's last seq: later ones arrive over the websocket)."""
    added = Event.objects.filter(cell_id=cell_id, type=registry.ANNOTATION_ADDED)
    if up_to is not None:
        added = added.filter(seq__lte=up_to)
    rows = list(added.values_list("session_id", "seq"))
    if not rows:
        return []
    session_id = rows[0][0]
    annotations = Annotation.objects.filter(session_id=session_id, seq__in=[s for _, s in rows])
    return list(annotations.order_by("seq"))


def comments_by_cell(session_id: int, *, up_to: int) -> dict[int, list[Annotation]]:
    """Every comment on a cell's event in the session, by cell id, as of seq ``up_to``
    (two queries for a whole page instead of one per cell)."""
    added = dict(
        Event.objects.filter(
            session_id=session_id,
            type=registry.ANNOTATION_ADDED,
            seq__lte=up_to,
            cell__isnull=False,
        ).values_list("seq", "cell_id")
    )
    result: dict[int, list[Annotation]] = {}
    if not added:
        return result
    annotations = Annotation.objects.filter(session_id=session_id, seq__in=list(added))
    for annotation in annotations.order_by("seq"):
        result.setdefault(added[annotation.seq], []).append(annotation)
    return result


def render_comment_event(message: dict[str, Any], *, session_id: int) -> str:
    """The hx-swap-oob HTML that applies one ``annotation.*`` event to an open session page
    ("" for comments on events of no cell, which only the transcript shows)."""
    cell_id = message.get("cell_id")
    if not cell_id:
        return ""
    payload = message["payload"]
    if message["type"] == registry.ANNOTATION_ADDED:
        comment = {
            "seq": message["seq"],
            "target_seq": payload.get("target_seq"),
            "author_name": message.get("actor", ""),
            "body": payload.get("body", ""),
            "resolved": False,
        }
        context = {
            "comment": comment,
            "cell_id": cell_id,
            "session_id": session_id,
            "oob": "beforeend",
        }
    elif message["type"] == registry.ANNOTATION_RESOLVED:
        annotation = Annotation.objects.filter(
            session_id=session_id, seq=payload.get("annotation_seq")
        ).first()
        if annotation is None:
            return ""
        comment = {
            "seq": annotation.seq,
            "target_seq": annotation.target_seq,
            "author_name": annotation.author_name,
            "body": annotation.body,
            "resolved": bool(payload.get("resolved")),
        }
        context = {
            "comment": comment,
            "cell_id": cell_id,
            "session_id": session_id,
            "oob": "outerHTML",
        }
    else:
        return ""
    return render_to_string("transcripts/_comment_event.html", context)
