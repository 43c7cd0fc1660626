from __future__ import annotations

from django.urls import path

from agentide.agents import views

urlpatterns = [
    path(
        "t/<slug:team_slug>/p/<slug:project_slug>/model/",
        views.provider_settings,
        name="provider_settings",
    ),
    path(
        "t/<slug:team_slug>/p/<slug:project_slug>/model/check/",
        views.provider_check,
        name="provider_check",
    ),
    path("s/<int:session_id>/agent/approval-mode/", views.approval_mode, name="approval_mode"),
    path(
        "s/<int:session_id>/agent/approvals/<int:approval_id>/",
        views.approval_decide,
        name="approval_decide",
    ),
]
