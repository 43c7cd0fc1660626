"""The operators' console in Django admin, through the admin client."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from agentide.accounts.models import User
from agentide.events.models import Event
from agentide.quotas import services as quotas
from agentide.quotas.models import MemberQuota, Quota, UsageRecord
from agentide.quotas.services import sandbox_admission
from agentide.sandboxes.models import Sandbox
from agentide.sessions.models import Session

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(personas: Any) -> Client:
    root = User.objects.create_superuser("root", "root@example.test", "pw-root-12345")
    client = Client()
    client.force_login(root)
    return client


def quota_form(team: Any, **limits: Any) -> dict[str, Any]:
    """The team change form's POST data with the quota inline filled from ``limits``."""
    quota = quotas.quota_for(team)
    data: dict[str, Any] = {
        "name": team.name, "slug": team.slug,
        "quota-TOTAL_FORMS": "1", "quota-INITIAL_FORMS": "1",
        "quota-MIN_NUM_FORMS": "0", "quota-MAX_NUM_FORMS": "1",
        "quota-0-id": str(quota.pk), "quota-0-team": str(team.pk),
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0", "memberships-MAX_NUM_FORMS": "1000",
    }
    for name in quotas.QUOTA_DEFAULT_FIELDS:
        value = limits.get(name, getattr(quota, name))
        data[f"quota-0-{name}"] = "" if value is None else str(value)
    data["quota-0-suspended_reason"] = limits.get("suspended_reason", "")
    if limits.get("suspended"):
        data["quota-0-suspended"] = "on"
    return data


def test_admin_pages_render_for_operators_only(operator, personas, session):
    Sandbox.objects.create(session=session, state=Sandbox.State.STOPPED, image="x")
    quotas.charge(team_id=personas.team.pk, user_id=personas.member.pk,
                  kind=UsageRecord.Kind.SANDBOX, sandbox_seconds=60)
    pages = [
        "/admin/accounts/team/", f"/admin/accounts/team/{personas.team.pk}/change/",
        "/admin/accounts/membership/", "/admin/quotas/quota/", "/admin/quotas/memberquota/",
        "/admin/quotas/usagerecord/", "/admin/quotas/quotaalert/", "/admin/notebook/session/",
        "/admin/sandboxes/sandbox/", "/admin/events/event/",
        f"/admin/events/event/{Event.objects.filter(session=session).first().pk}/change/"
        if Event.objects.filter(session=session).exists() else "/admin/events/event/",
        "/admin/accounts/team/?q=acme&quota__suspended__exact=0",
        "/admin/notebook/session/?q=budget&status__exact=active",
    ]
    for page in pages:
        assert operator.get(page).status_code == 200, page
    member = Client()
    member.force_login(personas.owner)
    assert member.get("/admin/accounts/team/").status_code == 302  # to the admin login


def test_the_team_page_shows_this_months_use_against_the_limits(operator, personas, set_quota):
    set_quota(tokens_per_month=1000, sandbox_hours_per_month=None)
    quotas.charge(team_id=personas.team.pk, user_id=personas.member.pk,
                  kind=UsageRecord.Kind.MODEL, input_tokens=450)
    page = operator.get(f"/admin/accounts/team/{personas.team.pk}/change/").content.decode()
    assert '<progress max="100" value="45">45%</progress>' in page
    assert "unlimited" in page
    listing = operator.get("/admin/accounts/team/").content.decode()
    assert '<progress max="100" value="45">45%</progress> 45% of tokens' in listing
    assert "no monthly limits" in listing  # the other team


def test_an_operator_lowers_a_limit_and_negative_or_absurd_limits_are_refused(
    operator, personas
):
    url = f"/admin/accounts/team/{personas.team.pk}/change/"
    response = operator.post(url, quota_form(personas.team, max_running_sandboxes=2,
                                             tokens_per_month=5000))
    assert response.status_code == 302, response.content.decode()[:3000]
    quota = Quota.objects.get(team=personas.team)
    assert (quota.max_running_sandboxes, quota.tokens_per_month) == (2, 5000)
    for bad in ({"max_running_sandboxes": -1}, {"cost_per_month": "-5"},
                {"sandbox_hours_per_month": "99999999"}, {"max_agent_steps": 100000},
                {"max_sandbox_cpus": "0.01"}):
        response = operator.post(url, quota_form(personas.team, **bad))
        assert response.status_code == 200, bad
        assert "errornote" in response.content.decode(), bad
    assert Quota.objects.get(team=personas.team).max_running_sandboxes == 2


def test_member_overrides_are_set_on_the_membership(operator, personas):
    membership = personas.membership(personas.member)
    url = f"/admin/accounts/membership/{membership.pk}/change/"
    assert operator.get(url).status_code == 200
    response = operator.post(url, {
        "team": personas.team.pk, "user": personas.member.pk, "role": "member",
        "quota_override-TOTAL_FORMS": "1", "quota_override-INITIAL_FORMS": "0",
        "quota_override-MIN_NUM_FORMS": "0", "quota_override-MAX_NUM_FORMS": "1",
        "quota_override-0-tokens_per_month": "100", "quota_override-0-membership": "",
    })
    assert response.status_code == 302
    assert MemberQuota.objects.get(membership=membership).tokens_per_month == 100


def test_suspend_and_unsuspend_actions(operator, personas, session, no_tasks):
    from agentide.quotas.services import QuotaExceeded
    from agentide.sessions.execution import submit_cell

    response = operator.post("/admin/accounts/team/", {
        "action": "suspend", "_selected_action": [personas.team.pk]})
    assert response.status_code == 302
    quota = Quota.objects.get(team=personas.team)
    assert quota.suspended and quota.suspended_reason == "suspended by root"
    with pytest.raises(QuotaExceeded):
        submit_cell(personas.membership(personas.member), session, "shell", "true")
    # Reading still works.
    reader = Client()
    reader.force_login(personas.reviewer)
    assert reader.get(f"/s/{session.pk}/").status_code == 200
    operator.post("/admin/accounts/team/", {
        "action": "unsuspend", "_selected_action": [personas.team.pk]})
    assert not Quota.objects.get(team=personas.team).suspended
    submit_cell(personas.membership(personas.member), session, "shell", "true")


def test_usage_records_filter_by_team_member_and_month_with_totals(operator, personas):
    quotas.charge(team_id=personas.team.pk, user_id=personas.member.pk,
                  kind=UsageRecord.Kind.SANDBOX, sandbox_seconds=1800)
    quotas.charge(team_id=personas.team.pk, user_id=personas.admin.pk,
                  kind=UsageRecord.Kind.MODEL, input_tokens=70, output_tokens=30,
                  cost=Decimal("0.25"))
    quotas.charge(team_id=personas.other_team.pk, user_id=personas.outsider.pk,
                  kind=UsageRecord.Kind.MODEL, input_tokens=5000, cost=Decimal("9"))
    period = quotas.current_period().isoformat()
    page = operator.get(f"/admin/quotas/usagerecord/?team__id__exact={personas.team.pk}"
                        f"&period={period}").content.decode()
    assert "<strong>0.50</strong> sandbox hours" in page
    assert "<strong>100</strong> tokens" in page
    assert "<strong>$0.25</strong> model cost" in page
    page = operator.get(f"/admin/quotas/usagerecord/?user__id__exact={personas.outsider.pk}"
                        ).content.decode()
    assert "<strong>5000</strong> tokens" in page
    page = operator.get("/admin/quotas/usagerecord/?period=1999-01-01").content.decode()
    assert "<strong>0</strong> tokens" in page


def test_events_are_read_only(operator, personas, session, no_tasks):
    from agentide.sessions.execution import submit_cell

    submit_cell(personas.membership(personas.member), session, "note", "hello")
    event = Event.objects.filter(session=session).first()
    url = f"/admin/events/event/{event.pk}/change/"
    assert operator.get(url).status_code == 200
    assert operator.post(url, {"type": "forged"}).status_code == 403
    assert operator.get("/admin/events/event/add/").status_code == 403
    assert operator.post(f"/admin/events/event/{event.pk}/delete/", {"post": "yes"}
                         ).status_code == 403
    assert Event.objects.get(pk=event.pk).type == "cell.created"


def test_end_session_action(operator, personas, session):
    response = operator.post("/admin/notebook/session/", {
        "action": "end_session", "_selected_action": [session.pk]})
    assert response.status_code == 302
    assert Session.objects.get(pk=session.pk).status == Session.Status.ENDED
    assert Event.objects.filter(session=session, type="session.ended").count() == 1


@pytest.fixture
def docker_site() -> Any:
    """A sandbox site of this test's own on the real engine, emptied afterwards."""
    import uuid

    from django.test import override_settings

    from agentide.sandboxes import services as sandboxes

    with override_settings(AGENTIDE_SANDBOX_SITE=f"test-{uuid.uuid4().hex[:8]}",
                           AGENTIDE_SANDBOX_WARM_POOL_SIZE=0):
        yield
        sandboxes.purge_site_sandboxes()


def test_stop_and_destroy_actions_on_a_real_sandbox(operator, personas, session, project,
                                                    docker_site):
    from agentide.sandboxes import services as sandboxes

    project.sandbox_memory_mb = 256
    project.save()
    sandbox = sandboxes.ensure_sandbox(session, admission=sandbox_admission(session))
    assert sandbox.state == Sandbox.State.RUNNING
    page = operator.get("/admin/sandboxes/sandbox/").content.decode()
    assert "Running" in page and "Acme" in page
    detail = operator.get(f"/admin/sandboxes/sandbox/{sandbox.pk}/change/").content.decode()
    assert "MiB" in detail and "processes" in detail  # live stats from the engine
    operator.post("/admin/notebook/session/", {
        "action": "stop_sandbox", "_selected_action": [session.pk]})
    sandbox.refresh_from_db()
    assert sandbox.state == Sandbox.State.STOPPED
    # Its running time was charged on the way (whole seconds, from the grant).
    assert UsageRecord.objects.filter(session=session).count() <= 1
    operator.post("/admin/sandboxes/sandbox/", {
        "action": "destroy", "_selected_action": [sandbox.pk]})
    sandbox.refresh_from_db()
    assert sandbox.state == Sandbox.State.DESTROYED
    assert not sandbox.container_id


def test_a_team_starts_with_the_site_defaults_shown_in_its_admin_page(operator, settings):
    from agentide.accounts.models import Team

    settings.AGENTIDE_QUOTA_DEFAULTS = {"max_running_sandboxes": 3, "tokens_per_month": 50_000}
    team = Team.objects.create(name="Fresh", slug="fresh")
    page = operator.get(f"/admin/accounts/team/{team.pk}/change/").content.decode()
    assert 'name="quota-0-max_running_sandboxes" value="3"' in page
    assert 'name="quota-0-tokens_per_month" value="50000"' in page
    quota = Quota.objects.get(team=team)
    assert (quota.max_running_sandboxes, quota.tokens_per_month, quota.cost_per_month) == (
        3, 50_000, None)
