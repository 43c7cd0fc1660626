from __future__ import annotations

from django.urls import path

from agentide.sessions import views

urlpatterns = [
    path(
        "t/<slug:team_slug>/p/<slug:project_slug>/sessions/new/",
        views.session_create,
        name="session_create",
    ),
    path("s/<int:session_id>/", views.session_detail, name="session_detail"),
]
