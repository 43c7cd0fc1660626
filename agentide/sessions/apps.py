from __future__ import annotations

from django.apps import AppConfig


class SessionsConfig(AppConfig):
    name = "agentide.sessions"
    # "sessions" belongs to django.contrib.sessions.
    label = "notebook"
    verbose_name = "Sessions"

    def ready(self) -> None:
        # Connects the receivers that close sockets when access ends, and those that record
        # what sandboxes and quotas report in the session's log.
        from agentide.sessions import signals  # noqa: F401
        from agentide.sessions.changes import CHECKPOINT_TYPES, render_checkpoint_event
        from agentide.sessions.notebook import register_renderer

        register_renderer(CHECKPOINT_TYPES, render_checkpoint_event)
