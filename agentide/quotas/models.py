"""Quotas per team (with per-member overrides), the usage ledger and its running totals.

``UsageRecord`` is the ledger: one row per charge (a stretch of sandbox running time, or one
model call). ``UsageTotal`` holds per-team, per-member, per-day sums updated with ``F()`` in
the same transaction as each ledger row, so current use is a sum over at most ~31 rows per
member instead of a scan of the ledger.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from agentide.accounts.models import Membership, Team, User


def month_start(day: dt.date) -> dt.date:
    """The first day of ``day``'s month: the key of a quota period."""
    return day.replace(day=1)


def next_month(day: dt.date) -> dt.date:
    """The first day of the month after ``day``'s."""
    first = day.replace(day=1)
    return (first + dt.timedelta(days=32)).replace(day=1)


class MonthlyLimits(models.Model):
    """Monthly budgets and per-turn limits, shared by team quotas and member overrides.

    Blank means unlimited; zero means none at all.
    """

    sandbox_hours_per_month = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(744_000))],
        help_text="Hours of sandbox running time per month (stopped time does not count).",
    )
    tokens_per_month = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(10**13)],
        help_text="Model tokens (input + output) per month.",
    )
    cost_per_month = models.DecimalField(
        "Cost per month ($)",
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(10_000_000))],
        help_text="Model spend per month, from the project's prices.",
    )
    max_agent_steps = models.PositiveIntegerField(
        "Max agent steps per turn",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(500)],
        help_text="Model calls one prompt may make (the lower of this and the project's).",
    )

    class Meta:
        abstract = True


class Quota(MonthlyLimits):
    """A team's limits, and whether it is suspended. Created with the site defaults
    (``AGENTIDE_QUOTA_DEFAULT_*``) the first time the team's quota is needed.

    The row doubles as the team's lock: enforcement that must not race takes it with
    ``select_for_update``.
    """

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="quota")
    max_running_sandboxes = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(10_000)],
        help_text="Sandboxes of the team running at the same time.",
    )
    max_sessions = models.PositiveIntegerField(
        "Max active sessions",
        null=True,
        blank=True,
        validators=[MaxValueValidator(1_000_000)],
    )
    max_sandbox_memory_mb = models.PositiveIntegerField(
        "Max memory per sandbox (MiB)",
        null=True,
        blank=True,
        validators=[MinValueValidator(64), MaxValueValidator(1_048_576)],
    )
    max_sandbox_cpus = models.DecimalField(
        "Max CPUs per sandbox",
        max_digits=5,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0.10")), MaxValueValidator(Decimal(256))],
    )
    max_command_timeout_s = models.PositiveIntegerField(
        "Max command timeout (s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(7 * 86400)],
    )
    max_workspace_disk_mb = models.PositiveIntegerField(
        "Max workspace disk per session (MiB)",
        null=True,
        blank=True,
        validators=[MinValueValidator(16), MaxValueValidator(16 * 1_048_576)],
        help_text="A project asking for a larger workspace gets this size instead.",
    )
    suspended = models.BooleanField(
        default=False, help_text="A suspended team can read everything but run nothing."
    )
    suspended_reason = models.CharField(max_length=200, blank=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"quota of {self.team}"


class MemberQuota(MonthlyLimits):
    """A member's own limits, checked against that member's usage (the team's limits
    still bound the team's total). A member's sessions and running sandboxes are those of
    the sessions they opened."""

    membership = models.OneToOneField(
        Membership, on_delete=models.CASCADE, related_name="quota_override"
    )
    max_running_sandboxes = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(10_000)],
        help_text="Sandboxes of this member's sessions running at the same time.",
    )
    max_sessions = models.PositiveIntegerField(
        "Max active sessions",
        null=True,
        blank=True,
        validators=[MaxValueValidator(1_000_000)],
        help_text="Active sessions this member has opened.",
    )

    class Meta:
        verbose_name = "member override"

    def __str__(self) -> str:
        return f"override for {self.membership}"


class UsageRecord(models.Model):
    """One charge: a stretch of sandbox running time or one model call. Append-only."""

    class Kind(models.TextChoices):
        SANDBOX = "sandbox", "Sandbox time"
        MODEL = "model", "Model call"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="usage_records")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )
    project = models.ForeignKey(
        "projects.Project", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    session = models.ForeignKey(
        "notebook.Session", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    day = models.DateField()
    period = models.DateField(help_text="First day of the month charged.")
    sandbox_seconds = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal(0))
    detail = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["team", "period"]),
            models.Index(fields=["user", "period"]),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.team_id} on {self.day}"

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class UsageTotal(models.Model):
    """Running sums of the ledger per team, member and day (``user`` null: nobody, e.g. a
    deleted user). Changed only together with the ledger, with ``F()`` updates."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="usage_totals")
    user = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="+")
    day = models.DateField()
    sandbox_seconds = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal(0))

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["team", "user", "day"],
                condition=Q(user__isnull=False),
                name="quotas_total_member_day",
            ),
            models.UniqueConstraint(
                fields=["team", "day"], condition=Q(user__isnull=True), name="quotas_total_day"
            ),
        ]
        indexes = [models.Index(fields=["team", "day"])]

    def __str__(self) -> str:
        return f"usage of {self.team_id}/{self.user_id} on {self.day}"


class SandboxMeter(models.Model):
    """Per session: how far its sandbox's running time has been charged, and when it was
    last granted a running slot (a grant holds the slot while the container is created)."""

    session = models.OneToOneField(
        "notebook.Session", on_delete=models.CASCADE, related_name="sandbox_meter"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    charged_until = models.DateTimeField(null=True, blank=True)
    granted_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"meter of session {self.session_id}"


class QuotaAlert(models.Model):
    """A monthly limit crossed a threshold (80, 90, 100 %): at most one per team, limit,
    threshold and period (the email goes out once)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="quota_alerts")
    period = models.DateField()
    limit = models.CharField(max_length=40)
    threshold = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    emailed_to = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["team", "period", "limit", "threshold"], name="quotas_alert_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.team_id} {self.limit} {self.threshold}% ({self.period:%Y-%m})"
