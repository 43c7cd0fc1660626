"""The registry of event types: one name per type, payloads checked against their shape."""

from __future__ import annotations

from typing import Any

import pytest

from agentide.events import registry
from agentide.events.log import append_event
from agentide.events.models import Event


def test_every_declared_type_has_a_label_and_a_shape() -> None:
    assert len(registry.TYPES) >= 30
    for name, event_type in registry.TYPES.items():
        assert event_type.name == name and event_type.label
        assert isinstance(event_type.payload, dict)


@pytest.mark.parametrize(
    ("type_", "payload", "problem"),
    [
        ("no.such_type", {}, "is not an event type"),
        (registry.CELL_OUTPUT, {}, "needs the payload key 'text'"),
        (registry.CELL_OUTPUT, {"text": "x", "colour": "red"}, "has no payload key 'colour'"),
        (registry.CELL_OUTPUT, {"text": 3}, "'text' must be str"),
        (registry.SESSION_RENAMED, {"title": None}, "'title' must be str"),
        (registry.CELL_STARTED, {"cell_id": True, "status": "running"}, "must be int"),
    ],
)
def test_appending_a_malformed_event_raises_and_writes_nothing(
    session: Any, type_: str, payload: dict[str, Any], problem: str
) -> None:
    with pytest.raises(registry.EventInvalid, match=problem):
        append_event(session.pk, type_, payload)
    assert not Event.objects.filter(session=session).exists()
    session.refresh_from_db()
    assert session.last_seq == 0


def test_optional_and_imported_keys_are_accepted(session: Any) -> None:
    append_event(session.pk, registry.CELL_OUTPUT, {"text": "x", "sgr": "1", "tail": True})
    append_event(session.pk, registry.ERROR, {"message": "m", "_imported": True, "_actor": "alice"})
    append_event(
        session.pk, registry.TERMINAL_CLOSED, {"terminal_id": "t", "exit_code": None, "how": "x"}
    )
    assert Event.objects.filter(session=session).count() == 3
