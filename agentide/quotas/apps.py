from __future__ import annotations

from importlib import import_module

from django.apps import AppConfig


class QuotasConfig(AppConfig):
    name = "agentide.quotas"
    verbose_name = "Quotas and usage"

    def ready(self) -> None:
        # Connects the ledger to sandbox state changes; the receivers need the models, so
        # they load here (Django's place for it), not when this module is imported.
        import_module("agentide.quotas.receivers")
