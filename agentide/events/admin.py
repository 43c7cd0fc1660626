"""The log in Django admin: operators read events; nobody adds, edits or deletes one."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from agentide.events.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ("session", "seq", "type", "actor", "cell", "created_at")
    list_filter = ("type",)
    search_fields = ("session__title", "type", "actor__username")
    list_select_related = ("session", "actor", "cell")
    readonly_fields = ("session", "seq", "type", "payload", "cell", "actor", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
