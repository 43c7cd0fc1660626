"""What the notebook shows of an API request on its prompt cell (the ``api.request`` event):
who drove it (the key's name) and its input items, escaped and bounded."""

from __future__ import annotations

from typing import Any

from django.template.loader import render_to_string

# Shown of a request: this many input items, each cut to this many characters.
SHOWN_ITEMS = 20
SHOWN_CHARS = 2_000


def request_view(payload: dict[str, Any]) -> dict[str, Any]:
    """The template context of an ``api.request`` payload."""
    items = []
    for item in payload.get("input") or ():
        if item.get("type") == "function_call_output":
            label, text = f"function_call_output {item.get('call_id', '')}", item.get("output")
        else:
            label, text = str(item.get("role", "")), item.get("content")
        text = str(text or "")
        if len(text) > SHOWN_CHARS:
            text = text[:SHOWN_CHARS] + f" [… {len(text) - SHOWN_CHARS} more characters]"
        items.append({"label": label, "text": text})
    tools = [str(tool.get("name", "")) for tool in payload.get("tools") or ()]
    if payload.get("shell"):
        tools.insert(0, "shell")
    instructions = payload.get("instructions") or ""
    return {
        "key_name": payload.get("key_name", ""),
        "response_id": payload.get("response_id", ""),
        "instructions": instructions[:SHOWN_CHARS],
        "items": items[:SHOWN_ITEMS],
        "more": max(0, len(items) - SHOWN_ITEMS),
        "tools": tools,
    }


def render_request_event(message: dict[str, Any], *, session_id: int) -> str:
    """The live fragment of an ``api.request`` event: shown under its cell's source."""
    return render_to_string(
        "api/_request.html",
        {"cell_id": message["cell_id"], "oob": True, **request_view(message["payload"])},
    )
