"""Session pages and the htmx endpoints of the notebook.

Every view checks access with ``get_session_for_user`` (outsiders get 404, reviewers get
403 on writes) and calls one service. The fragments rendered here are the same templates
that the websocket consumer pushes (``notebook.render_event``).
"""

from __future__ import annotations

import posixpath
from typing import Any, BinaryIO, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_POST

from agentide.lib import ansi
from agentide.lib.http import AuthedRequest, stream_response
from agentide.lib.uploads import plain_refusal, upload_limit
from agentide.projects.services import get_project_for_user
from agentide.quotas import services as quotas
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes import workspace
from agentide.sandboxes.backends.base import SandboxError
from agentide.sessions import changes, execution, notebook, presence, services
from agentide.sessions.models import Cell, Session


def max_download_bytes() -> int:
    return int(settings.AGENTIDE_MAX_DOWNLOAD_MB) * 1024 * 1024


def max_upload_bytes() -> int:
    return int(settings.AGENTIDE_SANDBOX_MAX_WRITE_BYTES)


@login_required
@require_POST
def session_create(request: AuthedRequest, team_slug: str, project_slug: str) -> HttpResponse:
    project, membership = get_project_for_user(
        request.user,
        team_slug,
        project_slug,
        write=True,
    )
    try:
        session = services.create_session(membership, project, request.POST.get("title", ""))
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect("project_detail", team_slug=team_slug, project_slug=project_slug)
    return redirect("session_detail", session_id=session.pk)


@login_required
@require_GET
def session_detail(request: AuthedRequest, session_id: int) -> HttpResponse:
    session, membership = services.get_session_for_user(request.user, session_id)
    return render(
        request,
        "sessions/session_detail.html",
        {
            "session": session,
            "session_id": session.pk,
            "project": session.project,
            "team": session.project.team,
            "membership": membership,
            "can_write": membership.can_write,
            "can_delete": session.deletable_by(membership),
            "notebook": notebook.notebook_view(session),
            "viewers": presence.viewers(session.pk),
            "sandbox": notebook.sandbox_summary(session),
            "dom_cap": settings.NOTEBOOK_DOM_OUTPUT_CHARS,
        },
    )


@login_required
@require_GET
def session_cells(request: AuthedRequest, session_id: int) -> HttpResponse:
    """The page of cells created before event ``before``, as of event ``up_to`` (the seq the
    browser has applied), with the sentinel that loads the page before it."""
    session, membership = services.get_session_for_user(request.user, session_id)
    try:
        before = int(request.GET.get("before", ""))
        up_to = int(request.GET.get("up_to", ""))
    except ValueError:
        return HttpResponse("before and up_to must be event numbers.", status=400)
    view = notebook.notebook_view(session, up_to=up_to, before=before)
    context = {
        "session_id": session.pk,
        "notebook": view,
        "can_write": membership.can_write,
        "dom_cap": settings.NOTEBOOK_DOM_OUTPUT_CHARS,
    }
    return render(request, "sessions/_cells.html", context)


@login_required
@require_POST
def session_rename(request: AuthedRequest, session_id: int) -> HttpResponse:
    session, membership = services.get_session_for_user(request.user, session_id, write=True)
    status = 200
    try:
        services.rename_session(membership, session, request.POST.get("title", ""))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        status = 422
    context = {"title": session.title, "can_write": True, "session_id": session.pk}
    return render(request, "sessions/_title.html", context, status=status)


@login_required
@require_POST
def session_delete(request: AuthedRequest, session_id: int) -> HttpResponse:
    """Delete the session, its history and its sandbox; back to the project page."""
    session, membership = services.get_session_for_user(request.user, session_id, write=True)
    project = session.project
    services.delete_session(membership, session)
    messages.success(request, f"Session {session.title} and its sandbox were deleted.")
    return redirect("project_detail", team_slug=project.team.slug, project_slug=project.slug)


@login_required
@require_POST
def cell_create(request: AuthedRequest, session_id: int) -> HttpResponse:
    """Submit a cell. 204 on success (the cell arrives over the websocket), 422 with the
    composer's error fragment for bad input."""
    session, membership = services.get_session_for_user(request.user, session_id, write=True)
    try:
        execution.submit_cell(
            membership,
            session,
            request.POST.get("kind", "shell"),
            request.POST.get("source", ""),
        )
    except ValidationError as exc:
        return render(
            request, "sessions/_composer_errors.html", {"errors": exc.messages}, status=422
        )
    response = render(request, "sessions/_composer_errors.html", {"errors": []})
    response["HX-Trigger"] = "cell-submitted"
    return response


@login_required
@require_POST
def cell_cancel(request: AuthedRequest, session_id: int, cell_id: int) -> HttpResponse:
    session, membership = services.get_session_for_user(request.user, session_id, write=True)
    execution.cancel_cell(membership, session, cell_id)
    return HttpResponse(status=204)


@login_required
@require_GET
def cell_output(request: AuthedRequest, session_id: int, cell_id: int) -> HttpResponse:
    """The whole stored output of a cell as plain text (colours and CR overwrites applied)."""
    session, _ = services.get_session_for_user(request.user, session_id)
    cell = services.get_cell(session, cell_id)
    text = ansi.plain_text(execution.cell_output_text(cell))
    response = HttpResponse(text, content_type="text/plain; charset=utf-8")
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_GET
def cell_diff(request: AuthedRequest, session_id: int, cell_id: int) -> HttpResponse:
    """The files a cell's run added, removed and changed (a bounded htmx fragment)."""
    session, _ = services.get_session_for_user(request.user, session_id)
    cell = services.get_cell(session, cell_id)
    context = {"diff": changes.cell_diff(session.pk, cell.pk, cell.kind), "session_id": session.pk}
    return render(request, "sessions/_diff.html", context)


@login_required
@require_POST
def checkpoint_restore(request: AuthedRequest, session_id: int) -> HttpResponse:
    """Queue a restore cell back to the posted checkpoint of this session (the cell arrives
    over the websocket); 422 with the reason for a checkpoint that cannot be restored."""
    session, membership = services.get_session_for_user(request.user, session_id, write=True)
    try:
        execution.submit_cell(
            membership, session, Cell.Kind.RESTORE, request.POST.get("checkpoint", "")
        )
    except ValidationError as exc:
        return HttpResponse(escape(" ".join(exc.messages)), status=422)
    return HttpResponse("")


@login_required
@require_GET
def sandbox_panel(request: AuthedRequest, session_id: int) -> HttpResponse:
    session, _ = services.get_session_for_user(request.user, session_id)
    context = {"session_id": session.pk, "sandbox": notebook.sandbox_summary(session, stats=True)}
    return render(request, "sessions/_sandbox.html", context)


@login_required
@require_GET
def sandbox_details(request: AuthedRequest, session_id: int) -> HttpResponse:
    session, membership = services.get_session_for_user(request.user, session_id)
    return _sandbox_details(request, session, can_write=membership.can_write)


@login_required
@require_POST
def sandbox_kill_leftovers(request: AuthedRequest, session_id: int) -> HttpResponse:
    """Kill the processes a finished command left running (every process of that command)."""
    session, _ = services.get_session_for_user(request.user, session_id, write=True)
    error = ""
    try:
        sandboxes.cancel_command(session, request.POST.get("command_id", ""))
    except SandboxError as exc:
        error = exc.message
    return _sandbox_details(request, session, can_write=True, error=error)


def _sandbox_details(
    request: AuthedRequest, session: Session, *, can_write: bool, error: str = ""
) -> HttpResponse:
    environment, env_error = sandboxes.persisted_environment(session)
    context = {"session_id": session.pk, "loaded": True, "environment": environment,
               "error": error or env_error, "can_write": can_write,
               "leftovers": sandboxes.leftover_processes(session)}
    return render(request, "sessions/_sandbox_details.html", context)


def _clean_dir(path: str) -> str:
    """A path relative to /workspace, normalised; Http404 for paths that leave it."""
    path = posixpath.normpath("/" + (path or "").strip().lstrip("/"))
    return path.lstrip("/")


@login_required
@require_GET
def session_files(request: AuthedRequest, session_id: int) -> HttpResponse:
    session, membership = services.get_session_for_user(request.user, session_id)
    path = _clean_dir(request.GET.get("path", ""))
    return _files_panel(request, session, path, can_write=membership.can_write)


def _files_panel(
    request: AuthedRequest,
    session: Session,
    path: str,
    *,
    can_write: bool,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    entries, list_error = workspace.list_workspace(session, path)
    parent = posixpath.dirname(path) if path else None
    context: dict[str, Any] = {
        "session_id": session.pk,
        "path": path,
        "parent": parent,
        "entries": entries,
        "error": error or list_error,
        "not_running": list_error == workspace.NOT_RUNNING and not error,
        "can_write": can_write,
    }
    return render(request, "sessions/_files.html", context, status=status)


@login_required
@require_GET
def file_download(request: AuthedRequest, session_id: int) -> HttpResponseBase:
    session, _ = services.get_session_for_user(request.user, session_id)
    path = _clean_dir(request.GET.get("path", ""))
    if not path:
        raise Http404("No such file.")
    # A GET must not start anything (a reviewer's click, or a link from another site): the
    # file is streamed out of the container whether it runs or not.
    try:
        stream = workspace.open_workspace_file(session, path, max_bytes=max_download_bytes())
    except workspace.DownloadRefused as exc:
        return HttpResponse(
            exc.message, status=exc.status, content_type="text/plain; charset=utf-8"
        )
    response = stream_response(
        request, stream.chunks, stream.close, content_type="application/octet-stream"
    )
    response["Content-Length"] = str(stream.size)
    filename = posixpath.basename(path).replace('"', "")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _upload_refused(request: HttpRequest, message: str, session_id: int) -> HttpResponse:
    """The files panel with the refusal (413), for an upload over the limit."""
    if not request.user.is_authenticated:
        return plain_refusal(request, message)
    session, _ = services.get_session_for_user(request.user, session_id, write=True)
    return _files_panel(
        cast(AuthedRequest, request), session, "", can_write=True, error=message, status=413
    )


@login_required
@require_POST
@upload_limit(max_upload_bytes, refuse=_upload_refused)
def file_upload(request: AuthedRequest, session_id: int) -> HttpResponse:
    session, _ = services.get_session_for_user(request.user, session_id, write=True)
    path = _clean_dir(request.POST.get("path", ""))
    upload = request.FILES.get("file")
    error = ""
    if upload is None:
        error = "Choose a file to upload."
    else:
        name = posixpath.basename(upload.name or "upload")
        try:
            workspace.write_workspace_file(
                session, posixpath.join(path, name), cast(BinaryIO, upload),
                admission=quotas.sandbox_admission(session),
            )
        except ValidationError as exc:
            error = " ".join(exc.messages)
    return _files_panel(
        request, session, path, can_write=True, error=error, status=422 if error else 200
    )
