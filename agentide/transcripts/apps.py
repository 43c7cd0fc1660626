from __future__ import annotations

from django.apps import AppConfig


class TranscriptsConfig(AppConfig):
    name = "agentide.transcripts"
    label = "transcripts"
    verbose_name = "Transcripts"
