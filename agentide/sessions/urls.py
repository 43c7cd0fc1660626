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
    path("s/<int:session_id>/cells/older/", views.session_cells, name="session_cells"),
    path("s/<int:session_id>/title/", views.session_rename, name="session_rename"),
    path("s/<int:session_id>/delete/", views.session_delete, name="session_delete"),
    path("s/<int:session_id>/cells/", views.cell_create, name="cell_create"),
    path("s/<int:session_id>/cells/<int:cell_id>/cancel/", views.cell_cancel, name="cell_cancel"),
    path("s/<int:session_id>/cells/<int:cell_id>/output/", views.cell_output, name="cell_output"),
    path("s/<int:session_id>/cells/<int:cell_id>/diff/", views.cell_diff, name="cell_diff"),
    path("s/<int:session_id>/restore/", views.checkpoint_restore, name="checkpoint_restore"),
    path("s/<int:session_id>/sandbox/", views.sandbox_panel, name="sandbox_panel"),
    path("s/<int:session_id>/sandbox/details/", views.sandbox_details, name="sandbox_details"),
    path("s/<int:session_id>/sandbox/leftovers/kill/", views.sandbox_kill_leftovers,
         name="sandbox_kill_leftovers"),
    path("s/<int:session_id>/files/", views.session_files, name="session_files"),
    path("s/<int:session_id>/files/download/", views.file_download, name="file_download"),
    path("s/<int:session_id>/files/upload/", views.file_upload, name="file_upload"),
]
