from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from agentide.sessions.models import Cell, Session


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("title", "project", "created_by", "status", "last_activity_at", "last_seq")
    list_filter = ("status",)
    search_fields = ("title", "project__name", "project__team__name")
    readonly_fields = ("created_at", "last_activity_at", "last_seq")


@admin.register(Cell)
class CellAdmin(admin.ModelAdmin):
    """Cells are changed by the notebook's services only; admins look, they do not edit."""

    list_display = ("__str__", "kind", "status", "exit_code", "author", "created_at")
    list_filter = ("status", "kind")
    search_fields = ("source", "session__title")
    raw_id_fields = ("session", "author")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
