"""``{% api_request cell_id %}``: the API request of a prompt cell (its ``api.request``
event), on the page's first render; live, the event's own fragment shows it."""

from __future__ import annotations

from typing import Any

from django import template
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe

from agentide.api.display import request_view
from agentide.events import registry
from agentide.events.models import Event

register = template.Library()


@register.simple_tag(takes_context=True)
def api_request(context: template.Context, cell_id: int) -> SafeString:
    """The request as of the page's ``notebook.last_seq`` (all the page's prompt cells read in
    one query, kept on the page's view), or inside a live fragment as of its ``event.seq``
    (a new cell's fragment comes before its request's event, which then adds it). A page of
    a session the API does not drive asks nothing."""
    notebook = context.get("notebook")
    event = context.get("event")
    if notebook is not None:
        requests = notebook.extras.get("api_requests")
        session = context.get("session")
        if requests is None and session is not None and not session.api_key_name:
            requests = notebook.extras["api_requests"] = {}  # not a session the API drives
        if requests is None:
            prompts = [cell.id for cell in notebook.cells if cell.kind == "prompt"]
            requests = dict(
                Event.objects.filter(
                    type=registry.API_REQUEST, cell_id__in=prompts, seq__lte=notebook.last_seq
                ).values_list("cell_id", "payload")
            )
            notebook.extras["api_requests"] = requests
        payload: Any = requests.get(cell_id)
    else:
        events = Event.objects.filter(type=registry.API_REQUEST, cell_id=cell_id)
        if isinstance(event, dict) and event.get("seq") is not None:
            events = events.filter(seq__lte=event["seq"])
        payload = events.values_list("payload", flat=True).first()
    if payload is None:
        return mark_safe("")
    html = render_to_string("api/_request.html", {"cell_id": cell_id, **request_view(payload)})
    return mark_safe(html)  # noqa: S308 - rendered by a template with autoescaping
