"""``{% cell_comments cell_id %}``: the comments on a cell's events, in the session page."""

from __future__ import annotations

from typing import Any

from django import template
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe

from agentide.sessions import changes
from agentide.transcripts.display import cell_comments as comments_of
from agentide.transcripts.display import comments_by_cell
from agentide.transcripts.models import Annotation

register = template.Library()


@register.simple_tag(takes_context=True)
def cell_comments(context: template.Context, cell_id: int) -> SafeString:
    """The cell's comments as of the page's ``notebook.last_seq`` (inside a live fragment:
    as of its ``event.seq``), in a container that live comments are appended to."""
    up_to: Any = None
    notebook = context.get("notebook")
    event = context.get("event")
    if notebook is not None:
        up_to = notebook.last_seq
    elif isinstance(event, dict):
        up_to = event.get("seq")
    session_id = context.get("session_id")
    if notebook is not None and session_id:
        # The whole page's comments, fetched once and kept on the page's notebook view.
        cache = getattr(notebook, "_comments_by_cell", None)
        if cache is None:
            cache = comments_by_cell(int(session_id), up_to=notebook.last_seq)
            notebook._comments_by_cell = cache
        comments = cache.get(cell_id, [])
    else:
        comments = comments_of(cell_id, up_to=up_to)
    html = render_to_string(
        "transcripts/_cell_comments.html",
        {"cell_id": cell_id, "session_id": session_id, "comments": comments},
    )
    return mark_safe(html)  # noqa: S308 - rendered by a template with autoescaping


@register.simple_tag
def open_comment_count(session_id: int) -> int:
    """How many comments on the session are not resolved."""
    return Annotation.objects.filter(session_id=session_id, resolved=False).count()


@register.simple_tag(takes_context=True)
def block_files(context: template.Context, block: Any) -> changes.FileChanges:
    """The "Files changed" summary of a cell block of the transcript (``view.Block``); the
    blocks of a view share one query for their checkpoints."""
    session = context["session"]
    view = context.get("view")
    own = None
    if view is not None:
        own = getattr(view, "_own_checkpoints", None)
        if own is None:
            own = changes.own_checkpoints(session.pk, [b.checkpoints for b in view.blocks])
            view._own_checkpoints = own
    return changes.file_changes(
        session.pk, block.first.cell_id, block.cell_kind, block.checkpoints, own=own
    )


@register.simple_tag(takes_context=True)
def block_diff(context: template.Context, block: Any) -> changes.CellDiff:
    """The files a cell block changed, without their text (for exports)."""
    session = context["session"]
    return changes.cell_diff(
        session.pk, block.first.cell_id, block.cell_kind, max_text_bytes=0
    )
