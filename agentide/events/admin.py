"""The log in Django admin: operators read events; nobody adds, edits or deletes one."""

from __future__ import annotations

from django.contrib import admin

from agentide.events.models import Event
from agentide.lib.admin import AppendOnlyAdmin


@admin.register(Event)
class EventAdmin(AppendOnlyAdmin):
    list_display = ("session", "seq", "type", "actor", "cell", "created_at")
    list_filter = ("type",)
    search_fields = ("session__title", "type", "actor__username")
    list_select_related = ("session", "actor", "cell")
    readonly_fields = ("session", "seq", "type", "payload", "cell", "actor", "created_at")
