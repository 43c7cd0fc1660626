from __future__ import annotations

from django.contrib import admin

from agentide.sessions.models import Session


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("title", "project", "created_by", "status", "last_activity_at")
    list_filter = ("status",)
    search_fields = ("title", "project__name", "project__team__name")
    readonly_fields = ("created_at", "last_activity_at")
