from __future__ import annotations

from django.contrib import admin

from agentide.agents.models import ModelProvider


@admin.register(ModelProvider)
class ModelProviderAdmin(admin.ModelAdmin):
    list_display = ("project", "kind", "model", "base_url", "updated_at")
    list_filter = ("kind",)
    search_fields = ("project__name", "project__team__name", "model")
    # The sealed key is not editable and never shown; keys are set on the project's page.
    exclude = ("api_key_sealed",)
    readonly_fields = ("updated_at",)
