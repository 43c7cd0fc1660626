from __future__ import annotations

from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "agentide.events"
    label = "events"
    verbose_name = "Event log"
