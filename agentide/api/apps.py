from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "agentide.api"
    label = "api"
    verbose_name = "Hosted runtime API"
