"""``{% agent_steps cell_id %}``: the agent's work inside a prompt cell;
``{% agent_header session %}``: the agent's state in the session header."""

from __future__ import annotations

from typing import Any

from django import template
from django.conf import settings
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe

from agentide.agents.display import fold_blocks, fold_cells_blocks, fold_rows
from agentide.agents.services import session_agent_summary

register = template.Library()


@register.simple_tag(takes_context=True)
def agent_steps(context: template.Context, cell_id: int) -> SafeString:
    """The blocks of a prompt cell as of the page's ``notebook.last_seq`` (or, inside a live
    fragment, as of its ``event.seq``), so the websocket's replay continues exactly where
    this render stops."""
    notebook = context.get("notebook")
    event = context.get("event")
    if notebook is not None:
        # The whole page's prompt cells, folded in one query and kept on the page's view.
        folded = notebook.extras.get("agent_blocks")
        if folded is None:
            rows = notebook.extras.get("agent_rows")  # read with the page's cells
            if rows is not None:
                folded = fold_rows(rows)
            else:
                prompts = [cell.id for cell in notebook.cells if cell.kind == "prompt"]
                folded = fold_cells_blocks(prompts, up_to=notebook.last_seq)
            notebook.extras["agent_blocks"] = folded
        blocks = folded.get(cell_id, [])
    else:
        up_to: Any = event.get("seq") if isinstance(event, dict) else None
        blocks = fold_blocks(cell_id, up_to=up_to)
    html = render_to_string(
        "agents/_steps.html",
        {"cell_id": cell_id, "blocks": blocks, "dom_cap": settings.NOTEBOOK_DOM_OUTPUT_CHARS},
    )
    return mark_safe(html)  # noqa: S308 - rendered by a template with autoescaping


@register.simple_tag
def agent_header(session: Any) -> SafeString:
    """Context used by the agent and the session's approval mode (a toggle for writers)."""
    html = render_to_string(
        "agents/_session_agent.html",
        {**session_agent_summary(session), "session_id": session.pk},
    )
    return mark_safe(html)  # noqa: S308 - rendered by a template with autoescaping
