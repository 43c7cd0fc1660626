from __future__ import annotations

from django.urls import path, re_path

from agentide.api import views, views_containers, views_responses

app_name = "api"

urlpatterns = [
    path("containers", views_containers.container_collection, name="containers"),
    path("containers/<str:container_id>", views_containers.container_detail,
         name="container"),
    path("containers/<str:container_id>/files", views_containers.file_collection,
         name="container_files"),
    path("containers/<str:container_id>/files/<str:file_id>", views_containers.file_detail,
         name="container_file"),
    path("containers/<str:container_id>/files/<str:file_id>/content",
         views_containers.file_content, name="container_file_content"),
    path("responses", views_responses.create, name="responses"),
    path("responses/<str:response_id>", views_responses.detail, name="response"),
    path(
        "responses/<str:response_id>/input_items",
        views_responses.input_items,
        name="response_input_items",
    ),
    path("responses/<str:response_id>/cancel", views_responses.cancel, name="response_cancel"),
    # Keep last: any other /v1/ path answers 404 in OpenAI's shape.
    re_path(r"^(?P<path>.*)$", views.not_found, name="not_found"),
]
