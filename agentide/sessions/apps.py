from __future__ import annotations

from django.apps import AppConfig


class SessionsConfig(AppConfig):
    name = "agentide.sessions"
    # "sessions" belongs to django.contrib.sessions.
    label = "notebook"
    verbose_name = "Sessions"
