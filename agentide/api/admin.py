from __future__ import annotations

from django.contrib import admin

from agentide.api.models import ApiContainer, ApiKey
from agentide.lib.admin import ReadOnlyAdmin


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "team", "project", "created_by", "created_at",
                    "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "team__name", "project__name")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at", "revoked_by")


@admin.register(ApiContainer)
class ApiContainerAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "name", "session", "key", "status", "last_active_at")
    list_filter = ("status",)
    search_fields = ("public_id", "name")
