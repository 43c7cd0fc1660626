"""The ledger: sandbox time from real running time, model calls, totals, alerts, banners."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from agentide.quotas import services as quotas
from agentide.quotas.models import QuotaAlert, SandboxMeter, UsageRecord
from agentide.sandboxes.models import Sandbox
from agentide.sessions.models import Cell

pytestmark = pytest.mark.django_db


def test_sandbox_time_is_charged_once_from_real_running_time(personas, session):
    start = timezone.now() - dt.timedelta(seconds=300)
    sandbox = Sandbox.objects.create(session=session, state=Sandbox.State.RUNNING, image="x",
                                     started_at=start)
    now = start + dt.timedelta(seconds=120)
    assert quotas.charge_sandbox_time(sandbox, now=now) == 120
    assert quotas.charge_sandbox_time(sandbox, now=now) == 0  # idempotent
    # It stops at +200 s: the hook charges up to then and frees its slot.
    SandboxMeter.objects.filter(session=session).update(granted_at=now)
    assert quotas.charge_sandbox_time(sandbox, "stopped", now=start + dt.timedelta(seconds=200)) \
        == 80
    assert SandboxMeter.objects.get(session=session).granted_at is None
    # Stopped time does not count.
    Sandbox.objects.filter(pk=sandbox.pk).update(state=Sandbox.State.STOPPED)
    assert quotas.charge_sandbox_time(sandbox, now=start + dt.timedelta(seconds=900)) == 0
    usage = quotas.usage_in(personas.team.pk)
    assert usage.sandbox_seconds == 200
    # Charged to the session's creator, project and session.
    record = UsageRecord.objects.order_by("created_at").first()
    assert record is not None
    assert (record.user, record.project_id, record.session_id) == (
        personas.member, session.project_id, session.pk)
    assert quotas.usage_in(personas.team.pk, user_id=personas.member.pk).sandbox_seconds == 200


def test_a_restart_charges_only_from_the_new_start(personas, session):
    sandbox = Sandbox.objects.create(session=session, state=Sandbox.State.STOPPED, image="x",
                                     started_at=timezone.now() - dt.timedelta(hours=5))
    quotas.check_can_start_sandbox(session)  # the start is granted now
    Sandbox.objects.filter(pk=sandbox.pk).update(state=Sandbox.State.RUNNING)
    charged = quotas.charge_sandbox_time(sandbox, now=timezone.now() + dt.timedelta(seconds=30))
    assert 29 <= charged <= 31


def test_pool_members_are_never_charged(personas):
    member = Sandbox.objects.create(state=Sandbox.State.POOLED, image="x",
                                    started_at=timezone.now() - dt.timedelta(hours=1))
    assert quotas.charge_sandbox_time(member) == 0
    assert quotas.charge_running_sandboxes() == 0


def test_model_calls_are_charged_to_the_prompt_author(personas, session):
    cell = Cell.objects.create(session=session, position=1, kind="prompt", source="hi",
                               author=personas.admin)
    quotas.charge_model_call(cell, input_tokens=1200, cached_tokens=200, output_tokens=300,
                             cost=Decimal("0.0123"), detail="turn: gpt")
    usage = quotas.usage_in(personas.team.pk, user_id=personas.admin.pk)
    assert (usage.tokens, usage.cached_tokens, usage.cost) == (1500, 200, Decimal("0.0123"))
    assert quotas.usage_in(personas.other_team.pk).tokens == 0
    (day, today), = quotas.daily_usage(personas.team.pk)[-1:]
    assert day == timezone.localdate() and today.tokens == 1500


def test_alerts_at_80_90_and_100_percent_are_emailed_once_to_owners_and_admins(
    personas, set_quota, settings, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    set_quota(tokens_per_month=1000)

    def use(tokens: int) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            quotas.charge(team_id=personas.team.pk, user_id=personas.member.pk,
                          kind=UsageRecord.Kind.MODEL, input_tokens=tokens)

    use(700)
    assert mail.outbox == []
    use(150)
    (message,) = mail.outbox
    assert message.subject == "[AgentIDE] Acme has used 80% of its monthly tokens"
    assert sorted(message.to) == ["admin@example.test", "owner@example.test"]
    assert "850 of 1,000" in message.body
    use(10)
    assert len(mail.outbox) == 1  # still 86 %: no second email for 80 %
    use(200)
    assert [m.subject for m in mail.outbox[1:]] == [
        "[AgentIDE] Acme has used 90% of its monthly tokens",
        "[AgentIDE] Acme has used 100% of its monthly tokens",
    ]
    assert sorted(QuotaAlert.objects.values_list("threshold", flat=True)) == [80, 90, 100]
    assert len(mail.outbox) == 3
    use(500)
    assert len(mail.outbox) == 3


def test_members_see_a_banner_once_a_threshold_is_crossed(personas, set_quota, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    set_quota(sandbox_hours_per_month=Decimal("1"))
    client = Client()
    client.force_login(personas.member)
    assert "quota-banner" not in client.get("/", follow=True).content.decode()
    quotas.charge(team_id=personas.team.pk, user_id=personas.owner.pk,
                  kind=UsageRecord.Kind.SANDBOX, sandbox_seconds=3300)
    quotas.check_alerts(personas.team.pk)
    page = client.get("/", follow=True).content.decode()
    assert "Acme has used 91% of its monthly sandbox-hours" in page
    client.force_login(personas.outsider)
    assert "quota-banner" not in client.get("/", follow=True).content.decode()


def test_the_beat_job_charges_running_sandboxes(personas, session, project):
    from agentide.quotas.tasks import charge_running_sandboxes
    from agentide.sessions.services import create_session

    start = timezone.now() - dt.timedelta(seconds=90)
    Sandbox.objects.create(session=session, state=Sandbox.State.RUNNING, image="x",
                           started_at=start)
    other = create_session(personas.membership(personas.owner), project, "Stopped")
    Sandbox.objects.create(session=other, state=Sandbox.State.STOPPED, image="x",
                           started_at=start)
    charged = charge_running_sandboxes()
    assert 89 <= charged <= 91
    assert quotas.usage_in(personas.team.pk).sandbox_seconds == charged
    assert UsageRecord.objects.filter(session=other).count() == 0


def test_a_start_refused_in_the_worker_fails_the_cell_with_the_message(
    personas, session, set_quota, monkeypatch
):
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions.execution import claim_next_cell, run_claimed_cell, submit_cell

    monkeypatch.setattr(sandboxes, "get_backend", lambda: pytest.fail("engine asked"))
    cell = submit_cell(personas.membership(personas.member), session, "shell", "echo hi")
    set_quota(suspended=True)  # between submit and run, e.g. by an operator
    claimed = claim_next_cell(session.pk, worker="test")
    assert claimed is not None and claimed.pk == cell.pk
    run_claimed_cell(claimed)
    cell.refresh_from_db()
    assert cell.status == Cell.Status.FAILED
    assert "Team Acme is suspended" in cell.error


def test_running_time_over_midnight_and_a_month_end_is_charged_to_the_days_it_ran(
    personas, session
):
    tz = timezone.get_current_timezone()
    start = dt.datetime(2026, 10, 31, 23, 0, tzinfo=tz)
    assert quotas.split_by_day(start, start + dt.timedelta(hours=2, seconds=30)) == [
        (start, 3600), (dt.datetime(2026, 11, 1, tzinfo=tz), 3630)]
    sandbox = Sandbox.objects.create(session=session, state=Sandbox.State.RUNNING, image="x",
                                     started_at=start)
    assert quotas.charge_sandbox_time(sandbox, now=start + dt.timedelta(hours=2)) == 7200
    october = quotas.usage_in(personas.team.pk, period=dt.date(2026, 10, 1))
    november = quotas.usage_in(personas.team.pk, period=dt.date(2026, 11, 1))
    assert (october.sandbox_seconds, november.sandbox_seconds) == (3600, 3600)
    assert sorted(UsageRecord.objects.values_list("period", "day")) == [
        (dt.date(2026, 10, 1), dt.date(2026, 10, 31)), (dt.date(2026, 11, 1), dt.date(2026, 11, 1))]
