from __future__ import annotations

from django.apps import AppConfig


class QuotasConfig(AppConfig):
    name = "agentide.quotas"
    verbose_name = "Quotas and usage"
