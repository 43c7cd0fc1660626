"""The operators' view of sandboxes: state, live stats, stop/destroy and reconcile."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from agentide.sandboxes import services
from agentide.sandboxes.models import Sandbox


def _each_session_sandbox(
    request: HttpRequest, queryset: QuerySet[Sandbox],
    verb: Callable[[services.SessionRef], Sandbox | None],
) -> int:
    """Apply ``verb`` to the session of each sandbox (pool members have none: the warm
    pool and the reconciler look after them); returns how many it applied to."""
    done = 0
    for sandbox in queryset.select_related("session__project"):
        if sandbox.session is None:
            continue
        try:
            done += verb(sandbox.session) is not None
        except Exception as exc:
            messages.error(request, f"{sandbox}: {getattr(exc, 'message', exc)}")
    return done


@admin.register(Sandbox)
class SandboxAdmin(admin.ModelAdmin):
    list_display = ["id", "session", "team", "state", "running_for", "image", "short_container",
                    "last_activity_at", "created_at"]
    list_filter = ["state", "image", "session__project__team"]
    list_select_related = ["session__project__team"]
    search_fields = ["container_id", "volume", "session__title", "session__project__team__name"]
    readonly_fields = ["live_stats", *[f.name for f in Sandbox._meta.fields]]
    actions = ["stop", "destroy", "reconcile"]

    @admin.display(description="live (from the engine)")
    def live_stats(self, obj: Sandbox) -> str:
        """CPU, memory and processes of a running sandbox, asked of the engine (detail
        page only: one engine call)."""
        if obj.session is None or obj.state != Sandbox.State.RUNNING:
            return "not running"
        try:
            stats = services.sandbox_stats(obj.session)
        except Exception as exc:
            return f"engine unavailable: {getattr(exc, 'message', exc)}"
        if stats is None:
            return "not running on the engine"
        return (f"CPU {stats.cpu_percent:.0f}% · memory {stats.memory_bytes // 2**20} of "
                f"{stats.memory_limit_bytes // 2**20} MiB · {stats.pids} processes")

    @admin.action(description="Reconcile every sandbox with the engine now",
                  permissions=["change"])
    def reconcile(self, request: HttpRequest, queryset: QuerySet[Sandbox]) -> None:
        report = services.reconcile()
        self.message_user(
            request,
            f"Reconciled: {len(report.removed_containers)} container(s) removed, "
            f"{len(report.marked_missing)} marked missing.",
        )

    @admin.display(description="container")
    def short_container(self, obj: Sandbox) -> str:
        return obj.container_id[:12]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sandboxes are made by the services, never by hand

    @admin.display(description="team")
    def team(self, obj: Sandbox) -> str:
        return obj.session.project.team.name if obj.session else "(warm pool)"

    @admin.display(description="running for")
    def running_for(self, obj: Sandbox) -> str:
        if obj.state != Sandbox.State.RUNNING or obj.started_at is None:
            return "—"
        minutes = int((timezone.now() - obj.started_at).total_seconds() // 60)
        return f"{minutes // 60} h {minutes % 60} min"

    @admin.action(description="Stop (keep the workspace)", permissions=["change"])
    def stop(self, request: HttpRequest, queryset: QuerySet[Sandbox]) -> None:
        done = _each_session_sandbox(request, queryset, services.stop_sandbox)
        self.message_user(request, f"Stopped {done} sandbox(es).")

    @admin.action(description="Destroy (container and workspace)", permissions=["delete"])
    def destroy(self, request: HttpRequest, queryset: QuerySet[Sandbox]) -> None:
        done = _each_session_sandbox(request, queryset, services.destroy_sandbox)
        self.message_user(request, f"Destroyed {done} sandbox(es).")
