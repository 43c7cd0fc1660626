from __future__ import annotations

from django.apps import AppConfig


class SandboxesConfig(AppConfig):
    name = "agentide.sandboxes"
    label = "sandboxes"
    verbose_name = "Sandboxes"
