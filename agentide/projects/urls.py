from __future__ import annotations

from django.urls import path

from agentide.projects import views

urlpatterns = [
    path("t/<slug:team_slug>/projects/new/", views.project_create, name="project_create"),
    path("t/<slug:team_slug>/p/<slug:project_slug>/", views.project_detail, name="project_detail"),
    path(
        "t/<slug:team_slug>/p/<slug:project_slug>/settings/",
        views.project_settings,
        name="project_settings",
    ),
]
