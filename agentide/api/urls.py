from __future__ import annotations

from django.urls import re_path

from agentide.api import views

app_name = "api"

urlpatterns = [
    # Keep last: any other /v1/ path answers 404 in OpenAI's shape.
    re_path(r"^(?P<path>.*)$", views.not_found, name="not_found"),
]
