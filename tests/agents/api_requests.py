"""Prompt cells of the hosted API for the agent tests: submitted with their ``api.request``
event in one transaction, as the API does."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from agentide.events import registry
from agentide.events.log import append_event
from agentide.sessions import execution
from agentide.sessions.models import Cell

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather of a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


def answer(call_id: str, output: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def api_ask(
    personas: Any,
    session: Any,
    items: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    shell: bool = True,
    instructions: str | None = None,
    max_output_tokens: int | None = None,
) -> Cell:
    """Submit a prompt cell with its API request, the way the API does it."""
    with transaction.atomic():
        cell = execution.submit_cell(
            personas.membership(personas.member), session, Cell.Kind.PROMPT, "API request"
        )
        append_event(
            session.pk,
            registry.API_REQUEST,
            {
                "response_id": f"resp_{cell.pk}",
                "key_name": "ci key",
                "instructions": instructions,
                "input": items,
                "tools": [WEATHER] if tools is None else tools,
                "shell": shell,
                "max_output_tokens": max_output_tokens,
            },
            cell=cell,
        )
    return cell
