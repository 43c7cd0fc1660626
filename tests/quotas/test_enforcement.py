"""Enforcement at cell submit, sandbox start and model calls, for every persona."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client

from agentide.events.models import Event
from agentide.quotas import services as quotas
from agentide.quotas.models import MemberQuota, UsageRecord
from agentide.quotas.services import QuotaExceeded, sandbox_admission
from agentide.sandboxes.models import Sandbox
from agentide.sessions.execution import submit_cell
from agentide.sessions.models import Cell
from agentide.sessions.services import create_session

pytestmark = pytest.mark.django_db


def refusals(session: Any) -> list[dict[str, Any]]:
    return list(Event.objects.filter(session=session, type="quota.exceeded")
                .order_by("seq").values_list("payload", flat=True))


def use_sandbox_seconds(personas: Any, user: Any, seconds: int) -> None:
    quotas.charge(team_id=personas.team.pk, user_id=user.pk, kind=UsageRecord.Kind.SANDBOX,
                  sandbox_seconds=seconds)


def use_tokens(personas: Any, user: Any, tokens: int, cost: str = "0") -> None:
    quotas.charge(team_id=personas.team.pk, user_id=user.pk, kind=UsageRecord.Kind.MODEL,
                  input_tokens=tokens, output_tokens=0, cost=Decimal(cost))


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
def test_a_suspended_team_cannot_run_but_can_still_write_notes(
    personas, session, set_quota, no_tasks, role
):
    set_quota(suspended=True, suspended_reason="unpaid invoice")
    actor = personas.membership(getattr(personas, role))
    with pytest.raises(QuotaExceeded) as refused:
        submit_cell(actor, session, "shell", "echo hi")
    assert "Team Acme is suspended (unpaid invoice)" in refused.value.message
    assert refused.value.limit == "suspended"
    assert not Cell.objects.filter(session=session, kind="shell").exists()
    assert no_tasks == []
    (event,) = refusals(session)
    assert event["limit"] == "suspended"
    note = submit_cell(actor, session, "note", "still reading")
    assert note.status == "finished"


def test_reviewers_and_outsiders_are_stopped_before_any_quota_check(personas, session):
    with pytest.raises(PermissionDenied):
        submit_cell(personas.membership(personas.reviewer), session, "shell", "id")
    outsider = personas.other_team.memberships.get(user=personas.outsider)
    from django.http import Http404

    with pytest.raises(Http404):
        submit_cell(outsider, session, "shell", "id")
    assert refusals(session) == []


def test_a_used_up_sandbox_hours_budget_refuses_shell_cells_with_use_and_whom_to_ask(
    personas, session, set_quota, no_tasks
):
    set_quota(sandbox_hours_per_month=Decimal("1.00"))
    use_sandbox_seconds(personas, personas.owner, 3000)
    submit_cell(personas.membership(personas.member), session, "shell", "true")  # 0.83 h used
    use_sandbox_seconds(personas, personas.owner, 700)
    with pytest.raises(QuotaExceeded) as refused:
        submit_cell(personas.membership(personas.member), session, "shell", "true")
    message = refused.value.message
    assert refused.value.limit == "sandbox_hours_per_month"
    assert "team Acme has used 1.03 of 1.00 sandbox-hours this month" in message
    assert "owners and admins (owner, admin)" in message
    assert refusals(session)[0]["message"] == message
    assert Cell.objects.filter(session=session, kind="shell").count() == 1


def test_token_and_cost_budgets_refuse_prompts_but_not_shell_cells(
    personas, session, set_quota, no_tasks
):
    set_quota(tokens_per_month=1000)
    use_tokens(personas, personas.admin, 1000)
    member = personas.membership(personas.member)
    with pytest.raises(QuotaExceeded) as refused:
        submit_cell(member, session, "prompt", "fix the build")
    assert "1,000 of 1,000 tokens" in refused.value.message
    submit_cell(member, session, "shell", "make")

    set_quota(tokens_per_month=None, cost_per_month=Decimal("2.00"))
    use_tokens(personas, personas.admin, 10, cost="2.5")
    with pytest.raises(QuotaExceeded) as refused:
        submit_cell(member, session, "prompt", "fix the build")
    assert "$2.50 of $2.00 model spend" in refused.value.message


def test_a_member_override_limits_that_member_only(personas, session, set_quota, no_tasks):
    set_quota(tokens_per_month=1_000_000)
    MemberQuota.objects.create(membership=personas.membership(personas.member),
                               tokens_per_month=100)
    use_tokens(personas, personas.member, 150)
    with pytest.raises(QuotaExceeded) as refused:
        submit_cell(personas.membership(personas.member), session, "prompt", "go on")
    assert "you have used 150 of 100 tokens" in refused.value.message
    # The owner has no override, and the team is far from its own limit.
    cell = submit_cell(personas.membership(personas.owner), session, "prompt", "go on")
    assert cell.pk


def test_a_project_larger_than_the_team_may_use_is_refused(
    personas, session, project, set_quota, no_tasks
):
    set_quota(max_sandbox_memory_mb=512)
    with pytest.raises(QuotaExceeded) as refused:
        submit_cell(personas.membership(personas.member), session, "shell", "true")
    assert "asks for 1024 MiB of memory per sandbox" in refused.value.message
    assert "at most 512" in refused.value.message
    project.sandbox_memory_mb = 512
    project.save()
    submit_cell(personas.membership(personas.member), session, "shell", "true")


def test_running_sandboxes_at_once_are_limited(personas, session, project, set_quota, no_tasks):
    set_quota(max_running_sandboxes=1)
    other = create_session(personas.membership(personas.owner), project, "Other")
    Sandbox.objects.create(session=other, state=Sandbox.State.RUNNING, image="x")
    with pytest.raises(QuotaExceeded) as refused:
        submit_cell(personas.membership(personas.member), session, "shell", "true")
    assert "already has 1 of its 1 sandboxes running at once" in refused.value.message
    # The session whose sandbox runs keeps working.
    submit_cell(personas.membership(personas.owner), other, "shell", "true")
    Sandbox.objects.filter(session=other).update(state=Sandbox.State.STOPPED)
    submit_cell(personas.membership(personas.member), session, "shell", "true")


def test_sandbox_start_is_refused_before_the_engine_is_asked(
    personas, session, set_quota, monkeypatch
):
    from agentide.sandboxes import services as sandboxes

    def no_engine() -> Any:
        raise AssertionError("the engine must not be asked")

    monkeypatch.setattr(sandboxes, "get_backend", no_engine)
    set_quota(suspended=True)
    with pytest.raises(QuotaExceeded):
        sandboxes.ensure_sandbox(session, admission=sandbox_admission(session))
    assert not Sandbox.objects.filter(session=session).exists()
    assert refusals(session)[0]["limit"] == "suspended"


def test_new_sessions_are_limited_and_refused_with_a_message(personas, project, set_quota):
    set_quota(max_sessions=1)
    create_session(personas.membership(personas.member), project, "One")
    with pytest.raises(QuotaExceeded) as refused:
        create_session(personas.membership(personas.owner), project, "Two")
    assert "1 of its 1 active sessions" in refused.value.message
    client = Client()
    client.force_login(personas.member)
    page = client.post(f"/t/acme/p/{project.slug}/sessions/new/", {"title": "Three"},
                       follow=True).content.decode()
    assert "has 1 of its 1 active sessions" in page
    assert project.sessions.count() == 1


def test_model_calls_stop_at_the_budget_and_at_the_step_limit(personas, session, set_quota):
    assert quotas.model_call_refusal(session, personas.member, steps=0) == ""
    set_quota(max_agent_steps=3)
    assert quotas.model_call_refusal(session, personas.member, steps=2) == ""
    refusal = quotas.model_call_refusal(session, personas.member, steps=3)
    assert "limit of 3 steps for one prompt" in refusal
    set_quota(max_agent_steps=None, cost_per_month=Decimal("1.00"))
    use_tokens(personas, personas.owner, 10, cost="1.00")
    refusal = quotas.model_call_refusal(session, personas.member, steps=1)
    assert "$1.00 of $1.00 model spend" in refusal
    assert [e["limit"] for e in refusals(session)] == ["max_agent_steps", "cost_per_month"]


def test_limits_out_of_range_are_refused_by_validation(personas, set_quota):
    from django.core.exceptions import ValidationError

    for bad in ({"max_running_sandboxes": -1}, {"sandbox_hours_per_month": Decimal("-1")},
                {"cost_per_month": Decimal("99999999")}, {"max_agent_steps": 0},
                {"max_sandbox_memory_mb": 10}, {"tokens_per_month": 10**15}):
        with pytest.raises(ValidationError):
            set_quota(**bad)


def test_member_overrides_limit_their_own_sessions_and_running_sandboxes(
    personas, session, project, set_quota, no_tasks
):
    MemberQuota.objects.create(membership=personas.membership(personas.member),
                               max_running_sandboxes=1, max_sessions=2)
    member = personas.membership(personas.member)
    second = create_session(member, project, "Second")  # the fixture's session is the first
    with pytest.raises(QuotaExceeded) as refused:
        create_session(member, project, "Third")
    assert "you have 2 of your 2 active sessions" in refused.value.message
    create_session(personas.membership(personas.owner), project, "The owner's")

    Sandbox.objects.create(session=second, state=Sandbox.State.RUNNING, image="x")
    with pytest.raises(QuotaExceeded) as refused:
        submit_cell(member, session, "shell", "true")
    assert "sessions opened by member already have 1 of their 1 sandboxes" in \
        refused.value.message
    # The owner's sessions are not the member's.
    owners = create_session(personas.membership(personas.owner), project, "Owner's second")
    submit_cell(personas.membership(personas.owner), owners, "shell", "true")
