from __future__ import annotations

from django.urls import path

from agentide.transcripts import views

urlpatterns = [
    path("s/<int:session_id>/transcript/", views.transcript_detail, name="transcript_detail"),
    path(
        "s/<int:session_id>/transcript/blocks/", views.transcript_blocks, name="transcript_blocks"
    ),
    path("s/<int:session_id>/transcript/news/", views.transcript_news, name="transcript_news"),
    path(
        "s/<int:session_id>/transcript.<str:fmt>",
        views.transcript_export,
        name="transcript_export",
    ),
    path(
        "s/<int:session_id>/transcript/comments/",
        views.annotation_create,
        name="annotation_create",
    ),
    path(
        "s/<int:session_id>/transcript/comments/<int:seq>/resolve/",
        views.annotation_resolve,
        name="annotation_resolve",
    ),
    path(
        "s/<int:session_id>/transcript/fork/<int:position>/",
        views.fork_create,
        name="fork_create",
    ),
    path("s/<int:session_id>/comparison/", views.fork_compare, name="fork_compare"),
    path(
        "t/<slug:team_slug>/transcripts/search/", views.transcript_search, name="transcript_search"
    ),
    path(
        "t/<slug:team_slug>/transcripts/import/", views.transcript_import, name="transcript_import"
    ),
    path(
        "t/<slug:team_slug>/transcripts/import/checkpoints/",
        views.transcript_import_checkpoints,
        name="transcript_import_checkpoints",
    ),
]
