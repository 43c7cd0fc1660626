"""Event type names for templates, from the log's registry.

``{% load event_types %}`` then ``{% if event.type|is_event:"CELL_OUTPUT" %}``: the argument is
the registry's constant name, so a template names a type the same way Python code does, and
a misspelt name fails loudly instead of never matching.
"""

from __future__ import annotations

from django import template

from agentide.events import registry

register = template.Library()


@register.filter
def is_event(type_name: str, constant: str) -> bool:
    """Whether ``type_name`` is the event type ``registry.<constant>``."""
    name = getattr(registry, constant, None)
    if not isinstance(name, str) or name not in registry.TYPES:
        raise template.TemplateSyntaxError(f"{constant!r} is no event type of the registry")
    return type_name == name
