"""The notebook shows an API request on its prompt cell: who drove it (the key's name) and its
input, escaped and bounded, through the renderer the api app registers."""

from __future__ import annotations

from agentide.api.display import SHOWN_CHARS, SHOWN_ITEMS
from agentide.events import registry
from agentide.sessions.notebook import render_event


def message(payload_input: list[dict[str, str]]) -> dict[str, object]:
    payload = {
        "response_id": "resp_abc",
        "key_name": "nightly <ci>",
        "instructions": "Be <b>brief</b>.",
        "input": payload_input,
        "tools": [{"type": "function", "name": "get_weather", "description": "",
                   "parameters": {}, "strict": True}],
        "shell": True,
        "max_output_tokens": None,
    }  # fmt: skip
    registry.check(registry.API_REQUEST, payload)
    return {"seq": 3, "type": registry.API_REQUEST, "payload": payload, "cell_id": 12}


def test_the_request_shows_under_its_cell_with_the_keys_name_and_input_escaped() -> None:
    html = render_event(
        message(
            [
                {"type": "message", "role": "user", "content": "<script>alert(1)</script>"},
                {"type": "function_call_output", "call_id": "call_9", "output": "12 C"},
            ]
        ),
        session_id=1,
    )
    assert 'hx-swap-oob="afterend:#cell-12-source"' in html
    assert "API request via key <strong>nightly &lt;ci&gt;</strong>" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "function_call_output call_9" in html and "12 C" in html
    assert "tools: shell, get_weather" in html
    assert "Be &lt;b&gt;brief&lt;/b&gt;." in html


def test_a_long_request_is_shown_bounded() -> None:
    items = [
        {"type": "message", "role": "user", "content": "x" * (SHOWN_CHARS + 500)}
        for _ in range(SHOWN_ITEMS + 5)
    ]
    html = render_event(message(items), session_id=1)
    assert html.count("<li>") == SHOWN_ITEMS
    assert "[… 500 more characters]" in html
    assert "… and 5 more input items" in html
    assert "x" * (SHOWN_CHARS + 1) not in html
