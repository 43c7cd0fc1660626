from __future__ import annotations

from django.contrib import admin

from agentide.agents.models import CommandApproval, ModelProvider


@admin.register(ModelProvider)
class ModelProviderAdmin(admin.ModelAdmin):
    list_display = ("project", "kind", "model", "base_url", "updated_at")
    list_filter = ("kind",)
    search_fields = ("project__name", "project__team__name", "model")
    # The sealed key is not editable and never shown; keys are set on the project's page.
    exclude = ("api_key_sealed",)
    readonly_fields = ("updated_at",)


@admin.register(CommandApproval)
class CommandApprovalAdmin(admin.ModelAdmin):
    list_display = ("command", "status", "decided_by", "created_at", "decided_at")
    list_filter = ("status",)
    search_fields = ("command", "reason")
    raw_id_fields = ("cell", "decided_by")
    readonly_fields = ("created_at", "decided_at")
