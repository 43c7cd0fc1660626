from __future__ import annotations

from django.contrib import admin

from agentide.projects.models import Project


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "sandbox_memory_mb", "sandbox_cpus", "created_at")
    list_filter = ("team",)
    search_fields = ("name", "slug", "team__name")
    autocomplete_fields = ["team"]
    readonly_fields = ("created_at",)
