"""The registry of event types: one name per type, payloads checked against their shape."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

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


def test_templates_name_declared_event_types_only() -> None:
    from django.template import Context, Template, TemplateSyntaxError

    uses = set()
    for path in (Path(settings.BASE_DIR) / "templates").rglob("*.html"):
        uses |= set(re.findall(r'is_event:"(\w+)"', path.read_text()))
    assert uses and all(getattr(registry, name) in registry.TYPES for name in uses)
    template = Template('{% load event_types %}{% if t|is_event:"CELL_OUTPUT" %}yes{% endif %}')
    assert template.render(Context({"t": "cell.output"})) == "yes"
    misspelt = Template('{% load event_types %}{% if t|is_event:"CELL_OUTPUTS" %}y{% endif %}')
    with pytest.raises(TemplateSyntaxError, match="no event type"):
        misspelt.render(Context({"t": "cell.output"}))


def test_python_code_names_event_types_through_the_registry() -> None:
    """No module but the registry spells an event type's name as a string literal."""
    root = Path(settings.BASE_DIR) / "agentide"
    literal = re.compile(r"""["']([a-z_]+\.[a-z_]+)["']""")
    found = []
    for path in root.rglob("*.py"):
        if path.name == "registry.py" or "migrations" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            found += [
                f"{path.relative_to(root)}:{number}: {name}"
                for name in literal.findall(line)
                if name in registry.TYPES
            ]
    assert found == []
