"""Top-level URL configuration."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("agentide.accounts.urls")),
    path("", include("agentide.projects.urls")),
    path("", include("agentide.sessions.urls")),
    path("", include("agentide.agents.urls")),
    path("", include("agentide.quotas.urls")),
    path("", include("agentide.transcripts.urls")),
    path("v1/", include("agentide.api.urls")),
    path("", include("agentide.api.team_urls")),
]
