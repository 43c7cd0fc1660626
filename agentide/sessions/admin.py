from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agentide.lib.admin import ReadOnlyAdmin
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.models import Sandbox
from agentide.sessions.models import Cell, Session
from agentide.sessions.services import end_session, remove_session


def _sessions_action(request: HttpRequest, queryset: QuerySet[Session], verb: str) -> int:
    done = 0
    for session in queryset.select_related("project__team"):
        try:
            if verb == "stop":
                done += sandboxes.stop_sandbox(session) is not None
            elif verb == "destroy":
                done += sandboxes.destroy_sandbox(session) is not None
            else:
                done += end_session(session, by=request.user)  # type: ignore[arg-type]
        except Exception as exc:
            messages.error(request, f"{session}: {getattr(exc, 'message', exc)}")
    return done


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("title", "team", "project", "created_by", "status", "sandbox_state",
                    "last_activity_at")
    list_filter = ("status", "sandbox__state", "project__team")
    list_select_related = ("project__team", "created_by", "sandbox")
    search_fields = ("title", "project__name", "project__team__name", "created_by__username")
    readonly_fields = ("created_at", "last_activity_at", "last_seq")
    actions = ["stop_sandbox", "destroy_sandbox", "end_session"]

    @admin.display(description="team", ordering="project__team__name")
    def team(self, obj: Session) -> str:
        return obj.project.team.name

    @admin.display(description="sandbox", ordering="sandbox__state")
    def sandbox_state(self, obj: Session) -> str:
        sandbox = Sandbox.objects.filter(session=obj).only("state").first()
        return sandbox.get_state_display() if sandbox else "—"

    @admin.action(description="Stop the sandbox (keep the workspace)", permissions=["change"])
    def stop_sandbox(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        done = _sessions_action(request, queryset, "stop")
        self.message_user(request, f"Stopped the sandbox of {done} session(s).")

    @admin.action(description="Destroy the sandbox (container and workspace)",
                  permissions=["delete"])
    def destroy_sandbox(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        done = _sessions_action(request, queryset, "destroy")
        self.message_user(request, f"Destroyed the sandbox of {done} session(s).")

    @admin.action(description="End the session (and stop its sandbox)", permissions=["change"])
    def end_session(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        done = _sessions_action(request, queryset, "end")
        self.message_user(request, f"Ended {done} session(s).")

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # A session's cells and events go with it; their read-only admins must not block that.
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected

    # Deleting in the admin removes the container and workspace too, as in the app.
    def delete_model(self, request: HttpRequest, obj: Session) -> None:
        remove_session(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Session]) -> None:
        for session in queryset:
            remove_session(session)


@admin.register(Cell)
class CellAdmin(ReadOnlyAdmin):
    """Cells are changed by the notebook's services only; admins look, they do not edit."""

    list_display = ("__str__", "kind", "status", "exit_code", "author", "created_at")
    list_filter = ("status", "kind")
    search_fields = ("source", "session__title")
    raw_id_fields = ("session", "author")
