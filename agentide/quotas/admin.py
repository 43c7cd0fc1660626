"""The operators' console: quotas, usage and the actions that stop runaway work.

Besides its own models, this module replaces the plain registrations of other apps' models
(their admin.py registers them; these re-registrations keep their options and add to them):
teams get the quota inline, this month's usage bars and suspend/unsuspend. Sessions and
sandboxes have their operators' actions in their own apps' admin; the log's own admin,
read-only, is agentide/events/admin.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet, Sum
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from agentide.accounts.admin import MembershipInline
from agentide.accounts.models import Membership, Team
from agentide.lib.admin import AppendOnlyAdmin
from agentide.quotas import services
from agentide.quotas.models import MemberQuota, Quota, QuotaAlert, UsageRecord

LIMIT_FIELDSETS: Any = (
    ("Machine", {"fields": (("max_running_sandboxes", "max_sessions"),
                            ("max_sandbox_memory_mb", "max_sandbox_cpus"),
                            ("max_command_timeout_s", "max_workspace_disk_mb"))}),
    ("Monthly budgets", {"fields": (("sandbox_hours_per_month", "tokens_per_month"),
                                    "cost_per_month", "max_agent_steps")}),
    ("Suspension", {"fields": ("suspended", "suspended_reason")}),
)


def usage_bars(team_id: int) -> SafeString:
    """This month's use against each monthly limit, as native progress bars."""
    rows = []
    for use in services.limits_in_use(team_id):
        if use.allowed is None:
            rows.append((use.label, services.format_amount(use.limit, use.used), "unlimited",
                         format_html("<span>{}</span>", "—")))
            continue
        bar = format_html(
            '<progress max="100" value="{}">{}%</progress> <strong>{}%</strong>',
            use.bar_percent, use.percent, use.percent,
        )
        rows.append((use.label, services.format_amount(use.limit, use.used),
                     services.format_amount(use.limit, use.allowed), bar))
    body = format_html_join(
        "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows
    )
    return format_html(
        '<table class="quota-usage"><thead><tr><th>Monthly</th><th>Used</th><th>Allowed</th>'
        "<th>%</th></tr></thead><tbody>{}</tbody></table>",
        body,
    )


class QuotaInline(admin.StackedInline):
    model = Quota
    can_delete = False
    fieldsets = LIMIT_FIELDSETS
    verbose_name_plural = "quota (blank = unlimited)"


class MemberQuotaInline(admin.StackedInline):
    model = MemberQuota
    can_delete = True
    extra = 0
    fields = (("max_running_sandboxes", "max_sessions"),
              ("sandbox_hours_per_month", "tokens_per_month"), "cost_per_month",
              "max_agent_steps")
    verbose_name_plural = "member override (blank = the team's limit)"


admin.site.unregister(Team)


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "members", "is_suspended", "month_usage", "created_at")
    list_filter = ("quota__suspended",)
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [QuotaInline, MembershipInline]
    readonly_fields = ("usage_this_month",)
    actions = ["suspend", "unsuspend"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Team]:
        return super().get_queryset(request).select_related("quota")

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        team = super().get_object(request, object_id, from_field)
        if team is not None and not Quota.objects.filter(team=team).exists():
            # The inline then shows the site defaults the team runs under, not blanks.
            services.quota_for(team)
            team = super().get_object(request, object_id, from_field)
        return team

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        fields = ["name", "slug"]
        return [*fields, "usage_this_month"] if obj is not None else fields

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # A lowered limit may already be crossed: alert (banner, email) now, not at the
        # next charge.
        services.check_alerts(form.instance.pk)

    @admin.display(description="members")
    def members(self, obj: Team) -> int:
        return obj.memberships.count()

    @admin.display(description="suspended", boolean=True)
    def is_suspended(self, obj: Team) -> bool:
        quota = getattr(obj, "quota", None)
        return bool(quota and quota.suspended)

    @admin.display(description="this month")
    def month_usage(self, obj: Team) -> SafeString:
        """One short line per limited monthly budget; "no monthly limits" otherwise."""
        limited = [use for use in services.limits_in_use(obj.pk) if use.allowed is not None]
        if not limited:
            return format_html("<span>{}</span>", "no monthly limits")
        return format_html_join(
            mark_safe("<br>"),
            '<progress max="100" value="{}">{}%</progress> {}% of {}',
            ((use.bar_percent, use.percent, use.percent, use.label) for use in limited),
        )

    @admin.display(description="usage this month")
    def usage_this_month(self, obj: Team) -> SafeString:
        return usage_bars(obj.pk) if obj.pk else format_html("{}", "—")

    @admin.action(description="Suspend the selected teams (they can read, not run)",
                  permissions=["change"])
    def suspend(self, request: HttpRequest, queryset: QuerySet[Team]) -> None:
        for team in queryset:
            services.set_suspended(team, True, reason=f"suspended by {request.user}")
        self.message_user(request, f"Suspended {queryset.count()} team(s).", messages.SUCCESS)

    @admin.action(description="Lift the suspension of the selected teams", permissions=["change"])
    def unsuspend(self, request: HttpRequest, queryset: QuerySet[Team]) -> None:
        for team in queryset:
            services.set_suspended(team, False)
        self.message_user(request, f"Unsuspended {queryset.count()} team(s).", messages.SUCCESS)


admin.site.unregister(Membership)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "team", "role", "has_override", "created_at")
    list_filter = ("role", "team")
    search_fields = ("user__username", "user__email", "team__name")
    autocomplete_fields = ["user", "team"]
    inlines = [MemberQuotaInline]

    @admin.display(description="override", boolean=True)
    def has_override(self, obj: Membership) -> bool:
        return MemberQuota.objects.filter(membership=obj).exists()


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ("team", "max_running_sandboxes", "sandbox_hours_per_month",
                    "tokens_per_month", "cost_per_month", "suspended", "updated_at")
    list_filter = ("suspended",)
    search_fields = ("team__name", "team__slug")
    autocomplete_fields = ["team"]
    fieldsets = ((None, {"fields": ("team",)}), *LIMIT_FIELDSETS)

    def save_model(self, request: HttpRequest, obj: Quota, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        services.check_alerts(obj.team_id)


@admin.register(MemberQuota)
class MemberQuotaAdmin(admin.ModelAdmin):
    list_display = ("membership", "max_running_sandboxes", "max_sessions",
                    "sandbox_hours_per_month", "tokens_per_month", "cost_per_month",
                    "max_agent_steps")
    list_filter = ("membership__team",)
    search_fields = ("membership__user__username", "membership__team__name")
    autocomplete_fields = ["membership"]


class MonthFilter(admin.SimpleListFilter):
    title = "month"
    parameter_name = "period"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        periods = UsageRecord.objects.order_by("-period").values_list("period", flat=True)
        return [(p.isoformat(), f"{p:%B %Y}") for p in periods.distinct()[:24]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(period=value) if value else queryset


@admin.register(UsageRecord)
class UsageRecordAdmin(AppendOnlyAdmin):
    list_display = ("created_at", "team", "user", "project", "session", "kind",
                    "sandbox_seconds", "tokens_used", "cost", "detail")
    list_filter = (MonthFilter, "kind", "team", "user", "project")
    search_fields = ("team__name", "user__username", "project__name", "session__title",
                     "detail")
    list_select_related = ("team", "user", "project", "session")
    date_hierarchy = "created_at"
    change_list_template = "admin/quotas/usagerecord/change_list.html"

    @admin.display(description="tokens")
    def tokens_used(self, obj: UsageRecord) -> int:
        return obj.tokens

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            sums = context["cl"].queryset.aggregate(
                sandbox_seconds=Sum("sandbox_seconds"), input_tokens=Sum("input_tokens"),
                output_tokens=Sum("output_tokens"), cost=Sum("cost"),
            )
            seconds = sums["sandbox_seconds"] or 0
            context["usage_totals"] = {
                "sandbox_hours": (Decimal(seconds) / 3600).quantize(Decimal("0.01")),
                "tokens": (sums["input_tokens"] or 0) + (sums["output_tokens"] or 0),
                "cost": (sums["cost"] or Decimal(0)).quantize(Decimal("0.01")),
            }
        return response


@admin.register(QuotaAlert)
class QuotaAlertAdmin(admin.ModelAdmin):
    list_display = ("team", "period", "limit", "threshold", "emailed_to", "created_at")
    list_filter = ("limit", "threshold", "team")
    readonly_fields = [f.name for f in QuotaAlert._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


