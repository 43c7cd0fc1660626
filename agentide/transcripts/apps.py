from __future__ import annotations

from django.apps import AppConfig


class TranscriptsConfig(AppConfig):
    name = "agentide.transcripts"
    label = "transcripts"
    verbose_name = "Transcripts"

    def ready(self) -> None:
        # The notebook (sessions/notebook.py) knows nothing of comments: this app tells it
        # how to show them live.
        from agentide.events import registry
        from agentide.sessions.notebook import register_renderer
        from agentide.transcripts.display import render_comment_event

        register_renderer(registry.ANNOTATION_TYPES, render_comment_event)
