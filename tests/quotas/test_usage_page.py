"""The team usage page: owners and admins read it; nobody else does."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client

from agentide.quotas import services as quotas
from agentide.quotas.models import UsageRecord

pytestmark = pytest.mark.django_db


def page_for(user, team) -> tuple[int, str]:
    client = Client()
    if user is not None:
        client.force_login(user)
    response = client.get(f"/t/{team.slug}/usage/")
    return response.status_code, response.content.decode()


def test_owners_and_admins_see_limits_use_and_a_daily_chart(personas, project, set_quota):
    set_quota(tokens_per_month=1000, cost_per_month=Decimal("10"))
    quotas.charge(team_id=personas.team.pk, user_id=personas.member.pk,
                  kind=UsageRecord.Kind.MODEL, input_tokens=200, output_tokens=50,
                  cost=Decimal("2.5"))
    quotas.charge(team_id=personas.team.pk, user_id=personas.admin.pk,
                  kind=UsageRecord.Kind.SANDBOX, sandbox_seconds=5400, project_id=project.pk)
    for user in (personas.owner, personas.admin):
        status, page = page_for(user, personas.team)
        assert status == 200
        assert '<progress max="100" value="25" title="25%">' in page  # 250 of 1,000 tokens
        assert "$2.50" in page and "$10.00" in page
        assert "<svg" in page and "<rect" in page and "<script" not in page.split("</head>")[1]
        assert "Tokens per day" in page
        assert "1.50" in page  # the admin's sandbox hours in the member table
        assert "<td>Demo</td><td>1.50</td>" in page  # and in the project table


@pytest.mark.parametrize("who", ["member", "reviewer"])
def test_members_and_reviewers_are_refused(personas, who):
    status, _ = page_for(getattr(personas, who), personas.team)
    assert status == 403


def test_outsiders_get_404_and_anonymous_users_go_to_login(personas):
    assert page_for(personas.outsider, personas.team)[0] == 404
    assert page_for(None, personas.team)[0] == 302


def test_the_team_page_links_to_usage_for_managers_only(personas):
    for user, shown in ((personas.owner, True), (personas.admin, True),
                        (personas.member, False), (personas.reviewer, False)):
        client = Client()
        client.force_login(user)
        page = client.get(f"/t/{personas.team.slug}/").content.decode()
        assert (f'href="/t/{personas.team.slug}/usage/"' in page) is shown, user
