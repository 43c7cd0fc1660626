from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "agentide.api"
    label = "api"
    verbose_name = "Hosted runtime API"

    def ready(self) -> None:
        # The notebook shows an API request on its prompt cell, live.
        from agentide.api.display import render_request_event
        from agentide.events import registry
        from agentide.sessions.notebook import register_renderer

        register_renderer([registry.API_REQUEST], render_request_event)
