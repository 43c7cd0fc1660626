"""Operators see comments, imports and forks; the log itself stays append-only."""

from __future__ import annotations

from django.contrib import admin

from agentide.lib.admin import ReadOnlyAdmin
from agentide.transcripts.models import Annotation, Fork, TranscriptImport


@admin.register(Annotation)
class AnnotationAdmin(ReadOnlyAdmin):
    list_display = ["session", "seq", "target_seq", "author_name", "resolved", "created_at"]
    list_filter = ["resolved"]
    search_fields = ["body", "author_name"]


@admin.register(TranscriptImport)
class TranscriptImportAdmin(ReadOnlyAdmin):
    list_display = ["session", "imported_by", "imported_at"]


@admin.register(Fork)
class ForkAdmin(ReadOnlyAdmin):
    list_display = [
        "session",
        "source",
        "from_position",
        "project",
        "status",
        "workspace_copied",
        "created_at",
    ]
    list_filter = ["status", "workspace_copied"]
