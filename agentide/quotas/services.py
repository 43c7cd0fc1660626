"""Quota workflows: reading limits and current use, enforcing them, charging the ledger.

Enforcement lives here and is called from the services that start work:

- ``check_can_run`` from ``sessions.services.submit_cell`` (before a cell is queued);
- ``check_can_start_sandbox`` through ``sandbox_admission(session)``, the ``Admission``
  callers hand to the sandbox verbs that may start a container (race-safe under the team's
  quota row lock); it also carries the team's workspace ceiling;
- ``model_call_refusal`` from the agents' turn loop (before each model call).

A refusal sends ``quota_refused`` (the session's log records it as ``quota.exceeded``) and
raises ``QuotaExceeded`` (a ValidationError whose message names the limit, the current use
and whom to ask). Charges (``charge_sandbox_time``, ``charge_model_call``) write a ledger
row and bump the per-day totals in one transaction; after commit the team's 80/90/100 %
alerts are checked. Sandbox time is charged on every state change
(``sandbox_state_changing``, received in ``agentide.quotas.signals``) and by beat.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet, Sum
from django.template.loader import render_to_string
from django.utils import timezone

from agentide.accounts.models import Membership, Role, Team, User
from agentide.events import registry
from agentide.projects.models import Project
from agentide.quotas.models import (
    MemberQuota,
    Quota,
    QuotaAlert,
    SandboxMeter,
    UsageRecord,
    UsageTotal,
    month_start,
    next_month,
)
from agentide.quotas.signals import quota_refused
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.models import Sandbox

log = logging.getLogger(__name__)

QUOTA_EVENT = registry.QUOTA_EXCEEDED
SESSION_ENDED_EVENT = registry.SESSION_ENDED
ALERT_THRESHOLDS = (80, 90, 100)
# A granted sandbox slot counts as taken this long, while its container is being created.
GRANT_HOLD = dt.timedelta(seconds=180)


class SessionRef(sandboxes.SessionRef, Protocol):
    """A session as quotas see it (a ``notebook.Session``: sessions are above quotas)."""

    @property
    def created_by_id(self) -> int | None: ...

    @property
    def created_by(self) -> User | None: ...


class CellRef(Protocol):
    """A prompt cell as the ledger sees it (a ``notebook.Cell``)."""

    @property
    def session_id(self) -> int: ...

    @property
    def author_id(self) -> int | None: ...


class QuotaExceeded(ValidationError):
    """A quota refuses the work. ``limit`` names the limit (a Quota field or "suspended")."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message, code="quota")
        self.limit = limit


# --- limits --------------------------------------------------------------------------------

QUOTA_DEFAULT_FIELDS = (
    "max_running_sandboxes",
    "max_sessions",
    "max_sandbox_memory_mb",
    "max_sandbox_cpus",
    "max_command_timeout_s",
    "max_workspace_disk_mb",
    "sandbox_hours_per_month",
    "tokens_per_month",
    "cost_per_month",
    "max_agent_steps",
)


def site_defaults() -> dict[str, Any]:
    """The limits a new team's quota starts with (``AGENTIDE_QUOTA_DEFAULTS``; None =
    unlimited)."""
    defaults = getattr(settings, "AGENTIDE_QUOTA_DEFAULTS", {})
    return {name: defaults.get(name) for name in QUOTA_DEFAULT_FIELDS}


def quota_for(team: Team | int) -> Quota:
    """The team's quota, created with the site defaults when it has none yet."""
    team_id = team if isinstance(team, int) else team.pk
    quota = Quota.objects.filter(team_id=team_id).first()
    if quota is not None:
        return quota
    try:
        with transaction.atomic():
            return Quota.objects.create(team_id=team_id, **site_defaults())
    except IntegrityError:
        return Quota.objects.get(team_id=team_id)


def _locked_quota(team_id: int) -> Quota:
    """The team's quota row, locked until the end of the current transaction."""
    quota_for(team_id)
    return Quota.objects.select_for_update().get(team_id=team_id)


def override_for(team_id: int, user_id: int | None) -> MemberQuota | None:
    if user_id is None:
        return None
    return MemberQuota.objects.filter(
        membership__team_id=team_id, membership__user_id=user_id
    ).first()


# --- current use ---------------------------------------------------------------------------


@dataclass
class Usage:
    """Sums of the ledger over some span."""

    sandbox_seconds: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def sandbox_hours(self) -> Decimal:
        return (Decimal(self.sandbox_seconds) / 3600).quantize(Decimal("0.01"))

    def measure(self, limit: str) -> Decimal:
        """This usage in the unit of a monthly limit field."""
        if limit == "sandbox_hours_per_month":
            return Decimal(self.sandbox_seconds) / 3600
        if limit == "tokens_per_month":
            return Decimal(self.tokens)
        return self.cost


MONTHLY_LIMITS = {
    "sandbox_hours_per_month": "sandbox-hours",
    "tokens_per_month": "tokens",
    "cost_per_month": "model spend",
}
_SUMS = ("sandbox_seconds", "input_tokens", "cached_tokens", "output_tokens", "cost")


def current_period(now: dt.datetime | None = None) -> dt.date:
    return month_start(timezone.localdate(now or timezone.now()))


def usage_in(
    team_id: int, *, period: dt.date | None = None, user_id: int | None = None
) -> Usage:
    """The team's (or one member's) use in the month starting ``period`` (this month by
    default): a sum over the per-day totals, at most ~31 rows per member."""
    start = period or current_period()
    totals = UsageTotal.objects.filter(team_id=team_id, day__gte=start, day__lt=next_month(start))
    if user_id is not None:
        totals = totals.filter(user_id=user_id)
    return _usage(totals.aggregate(**{name: Sum(name) for name in _SUMS}))


def _usage(sums: Mapping[str, Any]) -> Usage:
    """A Usage from a row of ``Sum`` annotations (None for no rows counts as 0)."""
    return Usage(
        sandbox_seconds=sums["sandbox_seconds"] or 0,
        input_tokens=sums["input_tokens"] or 0,
        cached_tokens=sums["cached_tokens"] or 0,
        output_tokens=sums["output_tokens"] or 0,
        cost=sums["cost"] or Decimal(0),
    )


def daily_usage(team_id: int, period: dt.date | None = None) -> list[tuple[dt.date, Usage]]:
    """One entry per day of the month starting ``period`` (up to today), oldest first."""
    start = period or current_period()
    end = min(next_month(start), timezone.localdate() + dt.timedelta(days=1))
    rows = (
        UsageTotal.objects.filter(team_id=team_id, day__gte=start, day__lt=next_month(start))
        .values("day")
        .annotate(**{name: Sum(name) for name in _SUMS})
    )
    by_day = {row["day"]: _usage(row) for row in rows}
    days = []
    day = start
    while day < end:
        days.append((day, by_day.get(day, Usage())))
        day += dt.timedelta(days=1)
    return days


@dataclass
class LimitUse:
    """One monthly limit against this month's use."""

    limit: str
    label: str
    used: Decimal
    allowed: Decimal | None

    @property
    def percent(self) -> int | None:
        if self.allowed is None:
            return None
        if self.allowed <= 0:
            return 100 if self.used > 0 else 0
        return int(self.used * 100 / self.allowed)

    @property
    def bar_percent(self) -> int:
        return min(100, self.percent or 0)


def limits_in_use(team_id: int, period: dt.date | None = None) -> list[LimitUse]:
    """The team's monthly limits with this month's use, in a fixed order."""
    quota = quota_for(team_id)
    usage = usage_in(team_id, period=period)
    result = []
    for limit, label in MONTHLY_LIMITS.items():
        allowed = getattr(quota, limit)
        result.append(
            LimitUse(
                limit=limit,
                label=label,
                used=usage.measure(limit),
                allowed=None if allowed is None else Decimal(allowed),
            )
        )
    return result


# --- messages ------------------------------------------------------------------------------


def who_to_ask(team_id: int, *, lower: bool = False) -> str:
    """Whom a refused member should ask: the team's owners and admins by name."""
    managers = Membership.objects.filter(team_id=team_id, role__in=[Role.OWNER, Role.ADMIN])
    rows = sorted(managers.values_list("role", "user__username"),
                  key=lambda row: (row[0] != Role.OWNER, row[1]))
    names = [username for _, username in rows[:3]]
    people = f"your team's owners and admins ({', '.join(names)})" if names else "your team"
    return f"{'ask' if lower else 'Ask'} {people} to have a site administrator raise it."


def format_amount(limit: str, value: Decimal) -> str:
    if limit == "tokens_per_month":
        return f"{int(value):,}"
    if limit == "cost_per_month":
        return f"${value:,.2f}"
    return f"{value:,.2f}"


def _monthly_message(team: str, whose: str, limit: str, used: Decimal, allowed: Decimal,
                     team_id: int) -> str:
    label = MONTHLY_LIMITS[limit]
    return (
        f"Monthly limit reached: {whose} used {format_amount(limit, used)} of "
        f"{format_amount(limit, allowed)} {label} this month. {who_to_ask(team_id)}"
    )


def _monthly_refusal(
    quota: Quota, user_id: int | None, limits: Iterable[str]
) -> tuple[str, str] | None:
    """(limit, message) for the first monthly limit the team or the member has used up."""
    team = quota.team
    team_use = usage_in(quota.team_id)
    override = override_for(quota.team_id, user_id)
    member_use = usage_in(quota.team_id, user_id=user_id) if override and user_id else None
    for limit in limits:
        allowed = getattr(quota, limit)
        if allowed is not None and team_use.measure(limit) >= allowed:
            message = _monthly_message(team.name, f"team {team.name} has", limit,
                                       team_use.measure(limit), Decimal(allowed), team.pk)
            return limit, message
        own = getattr(override, limit) if override else None
        if own is not None and member_use is not None and member_use.measure(limit) >= own:
            message = _monthly_message(team.name, "you have", limit, member_use.measure(limit),
                                       Decimal(own), team.pk)
            return limit, message
    return None


def _suspended_message(quota: Quota) -> str:
    reason = f" ({quota.suspended_reason})" if quota.suspended_reason else ""
    return (
        f"Team {quota.team.name} is suspended{reason}: its members can read sessions but not "
        f"run anything. Ask a site administrator to lift the suspension."
    )


def _sandbox_size_refusal(quota: Quota, project: Project) -> tuple[str, str] | None:
    """A project asking for more CPU, memory or command time than the team may use."""
    checks = (
        ("max_sandbox_memory_mb", project.sandbox_memory_mb, "MiB of memory per sandbox"),
        ("max_sandbox_cpus", project.sandbox_cpus, "CPUs per sandbox"),
        ("max_command_timeout_s", project.command_timeout_s, "seconds of command timeout"),
    )
    for limit, asked, label in checks:
        allowed = getattr(quota, limit)
        if allowed is not None and asked is not None and asked > allowed:
            return limit, (
                f"Quota exceeded: project {project.name} asks for {asked} {label}, but team "
                f"{quota.team.name} may use at most {allowed}. Lower the project's setting, or "
                f"{who_to_ask(quota.team_id, lower=True)}"
            )
    return None


def workspace_disk_ceiling(team_id: int) -> int | None:
    """The largest workspace (MiB) one of the team's sessions may have; None = no team
    limit. Unlike memory or CPU, a project asking for more is clamped, not refused: a
    smaller workspace still works, and its size only shows when it fills."""
    return quota_for(team_id).max_workspace_disk_mb


def _busy_sessions(
    team_id: int, session_id: int, now: dt.datetime, *, opened_by: int | None = None
) -> int:
    """Sessions of the team (opened by ``opened_by``, if given), other than ``session_id``,
    holding a running-sandbox slot: a running or starting sandbox, or a fresh grant whose
    container is still being made."""
    running = Sandbox.objects.filter(session__project__team_id=team_id,
                                     state__in=[Sandbox.State.RUNNING, Sandbox.State.CREATING])
    granted = SandboxMeter.objects.filter(session__project__team_id=team_id,
                                          granted_at__gt=now - GRANT_HOLD)
    if opened_by is not None:
        running = running.filter(session__created_by_id=opened_by)
        granted = granted.filter(session__created_by_id=opened_by)
    busy = set(running.exclude(session_id=session_id).values_list("session_id", flat=True))
    busy |= set(granted.exclude(session_id=session_id).values_list("session_id", flat=True))
    return len(busy)


def _running_refusal(quota: Quota, session: SessionRef, now: dt.datetime) -> tuple[str, str] | None:
    """A full set of running sandboxes: the team's, or those of the sessions opened by the
    session's creator when that member has an override."""
    allowed = quota.max_running_sandboxes
    if allowed is not None:
        busy = _busy_sessions(quota.team_id, session.pk, now)
        if busy >= allowed:
            return "max_running_sandboxes", (
                f"Quota exceeded: team {quota.team.name} already has {busy} of its {allowed} "
                f"sandboxes running at once. Idle sandboxes stop by themselves; to run more "
                f"at once, {who_to_ask(quota.team_id, lower=True)}"
            )
    override = override_for(quota.team_id, session.created_by_id)
    own = override.max_running_sandboxes if override else None
    if own is not None:
        busy = _busy_sessions(quota.team_id, session.pk, now, opened_by=session.created_by_id)
        if busy >= own:
            return "max_running_sandboxes", (
                f"Quota exceeded: sessions opened by {session.created_by} already have {busy} "
                f"of their {own} sandboxes running at once. Idle sandboxes stop by "
                f"themselves; to run more at once, {who_to_ask(quota.team_id, lower=True)}"
            )
    return None


def _refuse(session_id: int, actor: User | None, limit: str, message: str) -> QuotaExceeded:
    """Tell the session's log of the refusal (``quota_refused``) and return the error to
    raise."""
    quota_refused.send(Quota, session_id=session_id, actor=actor, limit=limit,
                       message=message)
    return QuotaExceeded(limit, message)


# --- enforcement ---------------------------------------------------------------------------


def _sandbox_running(session_id: int) -> bool:
    return Sandbox.objects.filter(
        session_id=session_id, state__in=[Sandbox.State.RUNNING, Sandbox.State.CREATING]
    ).exists()


def check_can_run(actor: Membership, session: SessionRef, kind: str) -> None:
    """Refuse a cell before it is queued when the team or member may not run it.

    Notes always pass. Shell and prompt cells are refused when the team is suspended, a
    monthly budget (team or the actor's override) is used up — tokens and cost only for
    prompts — the project asks for more than the team's sandbox size limits, or the
    session would need a sandbox slot the team does not have. Raises QuotaExceeded after
    appending a ``quota.exceeded`` event; changes nothing otherwise.
    """
    if kind == "note":
        return
    refusal = run_refusal(session, actor.user_id, kind)
    if refusal is not None:
        raise _refuse(session.pk, actor.user, *refusal)


def run_refusal(session: SessionRef, user_id: int | None, kind: str) -> tuple[str, str] | None:
    """(limit, message) when running a ``kind`` cell in ``session`` would break a quota."""
    team_id = session.project.team_id
    quota = quota_for(team_id)
    if quota.suspended:
        return "suspended", _suspended_message(quota)
    limits = ["sandbox_hours_per_month"]
    if kind == "prompt":
        limits += ["tokens_per_month", "cost_per_month"]
    refusal = _monthly_refusal(quota, user_id, limits)
    refusal = refusal or _sandbox_size_refusal(quota, session.project)
    if refusal is None and not _sandbox_running(session.pk):
        refusal = _running_refusal(quota, session, timezone.now())
    return refusal


def check_can_start_sandbox(session: SessionRef) -> None:
    """Refuse to start ``session``'s sandbox when the team may not run one more.

    Cheap when the sandbox already runs (one indexed query, no lock). Otherwise, under the
    team's quota row lock: refuses a suspended team, a used-up sandbox-hours budget, a
    project larger than the size limits, and a full set of running sandboxes; on success
    records a grant that holds the slot while the container is created, so two sessions
    racing for the last slot cannot both win. Raises QuotaExceeded (event appended).
    """
    if _sandbox_running(session.pk):
        return
    team_id = session.project.team_id
    with transaction.atomic():
        quota = _locked_quota(team_id)
        now = timezone.now()
        refusal: tuple[str, str] | None = None
        if quota.suspended:
            refusal = "suspended", _suspended_message(quota)
        refusal = refusal or _monthly_refusal(quota, None, ["sandbox_hours_per_month"])
        refusal = refusal or _sandbox_size_refusal(quota, session.project)
        refusal = refusal or _running_refusal(quota, session, now)
        if refusal is None:
            meter = _locked_meter(session.pk, team_id)
            meter.granted_at = now
            # Time before this start was either charged already or not running.
            meter.charged_until = now
            meter.save(update_fields=["granted_at", "charged_until"])
    if refusal is not None:
        raise _refuse(session.pk, None, *refusal)


@dataclass(frozen=True)
class SandboxAdmission:
    """The quotas' ``sandboxes.services.Admission`` for one session's sandbox."""

    session: SessionRef

    def check_start(self) -> None:
        check_can_start_sandbox(self.session)

    def max_disk_mb(self) -> int | None:
        return workspace_disk_ceiling(self.session.project.team_id)


def sandbox_admission(session: SessionRef) -> SandboxAdmission:
    """What to pass as ``admission`` to the sandbox verbs that may start ``session``'s
    sandbox: the team's start check and workspace ceiling."""
    return SandboxAdmission(session)


def model_call_refusal(session: SessionRef, user: User | None, *, steps: int) -> str:
    """The reason the agent may not make its next model call ("" when it may).

    ``steps`` is how many model calls the turn has made. Refuses a suspended team, a
    used-up token or cost budget (team, or ``user``'s override) and a turn at its
    ``max_agent_steps``. A refusal is appended to the session as ``quota.exceeded``.
    """
    team_id = session.project.team_id
    quota = quota_for(team_id)
    user_id = user.pk if user is not None else None
    refusal: tuple[str, str] | None = None
    if quota.suspended:
        refusal = "suspended", _suspended_message(quota)
    refusal = refusal or _monthly_refusal(quota, user_id, ["tokens_per_month", "cost_per_month"])
    override = override_for(team_id, user_id)
    max_steps = (override.max_agent_steps if override else None) or quota.max_agent_steps
    if refusal is None and max_steps is not None and steps >= max_steps:
        refusal = "max_agent_steps", (
            f"The agent reached team {quota.team.name}'s limit of {max_steps} steps for one "
            f"prompt. {who_to_ask(team_id)}"
        )
    if refusal is None:
        return ""
    return str(_refuse(session.pk, None, *refusal).message)


def check_can_open_session(actor: Membership, project: Project, *, active: QuerySet[Any]) -> None:
    """Refuse a new session when the team is suspended or has its maximum of active
    sessions (``active``: the team's active sessions, a queryset of ``notebook.Session``).
    Raises QuotaExceeded (there is no session yet to record an event in).

    Takes the team's quota row lock: called inside the transaction that creates the
    session, two sessions racing for the last place cannot both be created.
    """
    with transaction.atomic():
        quota = _locked_quota(project.team_id)
    if quota.suspended:
        raise QuotaExceeded("suspended", _suspended_message(quota))
    if quota.max_sessions is not None and (count := active.count()) >= quota.max_sessions:
        raise QuotaExceeded(
            "max_sessions",
            f"Quota exceeded: team {quota.team.name} has {count} of its {quota.max_sessions} "
            f"active sessions. {who_to_ask(project.team_id)}",
        )
    override = override_for(project.team_id, actor.user_id)
    own = override.max_sessions if override else None
    if own is not None and (count := active.filter(created_by_id=actor.user_id).count()) >= own:
        raise QuotaExceeded(
            "max_sessions",
            f"Quota exceeded: you have {count} of your {own} active sessions in team "
            f"{quota.team.name}. {who_to_ask(project.team_id)}",
        )


# --- charging ------------------------------------------------------------------------------


def _locked_meter(session_id: int, team_id: int) -> SandboxMeter:
    SandboxMeter.objects.get_or_create(session_id=session_id, defaults={"team_id": team_id})
    return SandboxMeter.objects.select_for_update().get(session_id=session_id)


def charge(
    *,
    team_id: int,
    user_id: int | None,
    kind: str,
    project_id: int | None = None,
    session_id: int | None = None,
    detail: str = "",
    now: dt.datetime | None = None,
    **amounts: Any,
) -> UsageRecord:
    """Write one ledger row and add it to the team's, the member's and the day's totals
    (one transaction). After commit, the team's alerts are checked."""
    day = timezone.localdate(now or timezone.now())
    with transaction.atomic():
        record = UsageRecord.objects.create(
            team_id=team_id, user_id=user_id, project_id=project_id, session_id=session_id,
            kind=kind, day=day, period=month_start(day), detail=detail[:200], **amounts,
        )
        bumps = {name: F(name) + value for name, value in amounts.items()}
        totals = UsageTotal.objects.filter(team_id=team_id, day=day)
        totals = (totals.filter(user__isnull=True) if user_id is None
                  else totals.filter(user_id=user_id))
        if not totals.update(**bumps):
            try:
                with transaction.atomic():
                    UsageTotal.objects.create(team_id=team_id, user_id=user_id, day=day,
                                              **amounts)
            except IntegrityError:
                totals.update(**bumps)  # created by a concurrent charge meanwhile
        transaction.on_commit(lambda: check_alerts(team_id))
    return record


def charge_sandbox_time(
    sandbox: Sandbox, new_state: str | None = None, *, now: dt.datetime | None = None
) -> int:
    """Charge a session sandbox's running time not charged yet, up to ``now``; return
    the seconds charged (0 for pool members and sandboxes not running).

    Called when a sandbox changes state (``new_state``; leaving the running states also
    frees its slot) and periodically for running sandboxes. Idempotent: the session's
    meter remembers how far time was charged, under its row lock.
    """
    if not sandbox.session_id:
        return 0
    now = now or timezone.now()
    row = (
        Sandbox.objects.filter(pk=sandbox.pk)
        .values("state", "started_at", "session__project_id", "session__project__team_id",
                "session__created_by_id")
        .first()
    )
    if row is None or row["session__project__team_id"] is None:
        return 0
    releasing = new_state is not None and new_state not in (
        Sandbox.State.RUNNING, Sandbox.State.CREATING)
    seconds = 0
    with transaction.atomic():
        meter = _locked_meter(sandbox.session_id, row["session__project__team_id"])
        if row["state"] == Sandbox.State.RUNNING and row["started_at"] is not None:
            start = max(row["started_at"], meter.charged_until or row["started_at"])
            seconds = int((now - start).total_seconds())
            if seconds > 0:
                meter.charged_until = start + dt.timedelta(seconds=seconds)
                for day_end, day_seconds in split_by_day(start, meter.charged_until):
                    charge(
                        team_id=row["session__project__team_id"],
                        user_id=row["session__created_by_id"],
                        kind=UsageRecord.Kind.SANDBOX,
                        project_id=row["session__project_id"],
                        session_id=sandbox.session_id,
                        sandbox_seconds=day_seconds,
                        now=day_end,
                    )
        if releasing:
            meter.granted_at = None
        meter.save(update_fields=["charged_until", "granted_at"])
    return max(seconds, 0)


def split_by_day(start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, int]]:
    """Whole seconds of [start, end) per local day, as (a moment in that day, seconds);
    the pieces add up to ``int(end - start)``, so a stretch over midnight (or a month's
    end) is charged to the days it ran on."""
    total = int((end - start).total_seconds())
    pieces: list[tuple[dt.datetime, int]] = []
    cursor = start
    while True:
        midnight = timezone.make_aware(
            dt.datetime.combine(timezone.localdate(cursor) + dt.timedelta(days=1), dt.time.min)
        )
        if midnight >= end:
            break
        pieces.append((cursor, int((midnight - cursor).total_seconds())))
        cursor = midnight
    pieces.append((cursor, total - sum(seconds for _, seconds in pieces)))
    return [(moment, seconds) for moment, seconds in pieces if seconds > 0]


def charge_running_sandboxes(*, now: dt.datetime | None = None) -> int:
    """Charge every running session sandbox up to ``now`` (beat); returns seconds charged."""
    total = 0
    running = Sandbox.objects.filter(state=Sandbox.State.RUNNING, session__isnull=False)
    for sandbox in running.only("pk", "session_id"):
        try:
            total += charge_sandbox_time(sandbox, now=now)
        except Exception:
            log.exception("charging sandbox %s failed", sandbox.pk)
    return total


def charge_model_call(
    cell: CellRef,
    *,
    input_tokens: int,
    cached_tokens: int,
    output_tokens: int,
    cost: Decimal,
    detail: str = "",
) -> UsageRecord:
    """Charge one model call of a prompt cell to its author, session, project and team."""
    project = Project.objects.get(sessions=cell.session_id)
    return charge(
        team_id=project.team_id,
        user_id=cell.author_id,
        kind=UsageRecord.Kind.MODEL,
        project_id=project.pk,
        session_id=cell.session_id,
        detail=detail,
        input_tokens=input_tokens,
        cached_tokens=cached_tokens,
        output_tokens=output_tokens,
        cost=cost,
    )


# --- alerts --------------------------------------------------------------------------------


def check_alerts(team_id: int, *, now: dt.datetime | None = None) -> list[QuotaAlert]:
    """Record each 80/90/100 % threshold of a monthly limit the team has crossed this
    period, emailing its owners and admins once per threshold; returns the new alerts."""
    period = current_period(now)
    new = []
    for use in limits_in_use(team_id, period):
        percent = use.percent
        if percent is None:
            continue
        for threshold in ALERT_THRESHOLDS:
            if percent < threshold:
                continue
            try:
                with transaction.atomic():
                    alert, created = QuotaAlert.objects.get_or_create(
                        team_id=team_id, period=period, limit=use.limit, threshold=threshold
                    )
            except IntegrityError:
                continue
            if created:
                _email_alert(alert, use)
                new.append(alert)
    return new


def _email_alert(alert: QuotaAlert, use: LimitUse) -> None:
    recipients = list(
        Membership.objects.filter(team_id=alert.team_id, role__in=[Role.OWNER, Role.ADMIN])
        .exclude(user__email="")
        .values_list("user__email", flat=True)
    )
    if not recipients:
        return
    team = Team.objects.get(pk=alert.team_id)
    context = {"team": team, "alert": alert, "use": use,
               "used": format_amount(use.limit, use.used),
               "allowed": format_amount(use.limit, use.allowed or Decimal(0))}
    subject = f"[AgentIDE] {team.name} has used {alert.threshold}% of its monthly {use.label}"
    body = render_to_string("quotas/alert_email.txt", context)
    try:
        send_mail(subject, body, None, recipients)
    except Exception:
        log.exception("sending the quota alert %s failed", alert.pk)
        return
    QuotaAlert.objects.filter(pk=alert.pk).update(emailed_to=", ".join(recipients))


@dataclass
class Banner:
    team: Team
    use: LimitUse


def banners_for(user: User) -> list[Banner]:
    """Warnings for the user's teams whose monthly use passed 80 % of a limit this
    month. Cheap for the common case: one query finds teams with alerts this period."""
    if not user.is_authenticated:
        return []
    team_ids = set(
        QuotaAlert.objects.filter(
            period=current_period(), team__memberships__user=user
        ).values_list("team_id", flat=True)
    )
    banners = []
    for team in Team.objects.filter(pk__in=team_ids).order_by("name"):
        for use in limits_in_use(team.pk):
            if use.percent is not None and use.percent >= ALERT_THRESHOLDS[0]:
                banners.append(Banner(team=team, use=use))
    return banners


# --- operators' actions (Django admin) -------------------------------------------------------


def set_suspended(team: Team, suspended: bool, *, reason: str = "") -> Quota:
    """Suspend a team (it can read, not run) or lift its suspension."""
    with transaction.atomic():
        quota = _locked_quota(team.pk)
        quota.suspended = suspended
        quota.suspended_reason = reason[:200] if suspended else ""
        quota.suspended_at = timezone.now() if suspended else None
        quota.save(update_fields=["suspended", "suspended_reason", "suspended_at", "updated_at"])
    return quota


@dataclass
class MemberUse:
    user: User
    role: str
    usage: Usage


def member_usage(team_id: int, period: dt.date | None = None) -> list[MemberUse]:
    """Each member's use this month, busiest first (members without use included)."""
    start = period or current_period()
    rows = (
        UsageTotal.objects.filter(team_id=team_id, day__gte=start, day__lt=next_month(start))
        .values("user_id")
        .annotate(**{name: Sum(name) for name in _SUMS})
    )
    by_user = {row["user_id"]: _usage(row) for row in rows}
    people = [
        MemberUse(user=m.user, role=m.get_role_display(), usage=by_user.get(m.user_id, Usage()))
        for m in Membership.objects.filter(team_id=team_id).select_related("user")
    ]
    people.sort(key=lambda p: (-p.usage.cost, -p.usage.tokens, -p.usage.sandbox_seconds,
                               p.user.username))
    return people


@dataclass
class ProjectUse:
    name: str
    usage: Usage


def project_usage(team_id: int, period: dt.date | None = None) -> list[ProjectUse]:
    """This month's use per project, busiest first: one aggregate over the month's ledger
    rows of the team (indexed by team and period; for the usage page, not per request)."""
    start = period or current_period()
    rows = (
        UsageRecord.objects.filter(team_id=team_id, period=start)
        .values("project_id", "project__name")
        .annotate(**{name: Sum(name) for name in _SUMS})
    )
    result = [ProjectUse(name=row["project__name"] or "(deleted project)", usage=_usage(row))
              for row in rows]
    result.sort(key=lambda p: (-p.usage.cost, -p.usage.tokens, -p.usage.sandbox_seconds, p.name))
    return result
