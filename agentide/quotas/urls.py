from __future__ import annotations

from django.urls import path

from agentide.quotas import views

urlpatterns = [
    path("t/<slug:team_slug>/usage/", views.team_usage, name="team_usage"),
]
