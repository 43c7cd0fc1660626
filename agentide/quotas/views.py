"""The team's usage page: limits, this month's use and a daily chart (owners and admins)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from agentide.accounts.services import get_membership_for_user
from agentide.lib.http import AuthedRequest
from agentide.quotas import services
from agentide.quotas.charts import daily_chart


@login_required
@require_GET
def team_usage(request: AuthedRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_for_user(request.user, team_slug, manage=True)
    team = membership.team
    quota = services.quota_for(team)
    days = services.daily_usage(team.pk)
    context = {
        "team": team,
        "membership": membership,
        "quota": quota,
        "limits": services.limits_in_use(team.pk),
        "usage": services.usage_in(team.pk),
        "chart": daily_chart(days),
        "members": services.member_usage(team.pk),
        "projects": services.project_usage(team.pk),
        "period": services.current_period(),
    }
    return render(request, "quotas/usage.html", context)
