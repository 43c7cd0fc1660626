"""The API's pages in the browser (mounted at the site's root, not under /v1/)."""

from __future__ import annotations

from django.urls import path

from agentide.api import views

urlpatterns = [
    path("t/<slug:team_slug>/api-keys/", views.key_create, name="api_key_create"),
    path("t/<slug:team_slug>/api-keys/<int:key_id>/revoke/", views.key_revoke,
         name="api_key_revoke"),
]
