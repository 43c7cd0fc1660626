from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from agentide.sandboxes.models import Sandbox


@admin.register(Sandbox)
class SandboxAdmin(admin.ModelAdmin):
    list_display = ["id", "session", "state", "image", "short_container", "last_activity_at",
                    "created_at"]
    list_filter = ["state", "image"]
    search_fields = ["container_id", "volume", "session__title"]
    readonly_fields = [f.name for f in Sandbox._meta.fields]

    @admin.display(description="container")
    def short_container(self, obj: Sandbox) -> str:
        return obj.container_id[:12]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sandboxes are made by the services, never by hand
