"""Transcript pages: read, comment, export, import, search.

Every session view goes through ``services.get_transcript_for_user`` (outsiders get 404);
reviewers may read, export, search and comment; importing needs a writer.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.staticfiles import finders
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agentide.accounts.services import get_membership_for_user
from agentide.lib.http import AuthedRequest
from agentide.lib.uploads import plain_refusal, upload_limit
from agentide.sessions.models import Session
from agentide.transcripts import exchange, forks, search, services, tasks
from agentide.transcripts.format import TranscriptInvalid
from agentide.transcripts.forms import BundleImportForm, ForkForm, ImportForm
from agentide.transcripts.models import Fork
from agentide.transcripts.view import FILTERS, page, transcript_view

# The checkpoint bundle exported beside the transcript (docs/checkpoints.md).
BUNDLE_FORMAT = "checkpoints.tar"
# The downloaded HTML file carries its own inline stylesheet and nothing else.
EXPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _int(value: str | None) -> int | None:
    try:
        return int(value or "")
    except ValueError:
        return None


def _at(session_id: int, seq: int) -> str:
    """The transcript page opened at event ``seq`` (on whichever page of blocks holds it)."""
    return f"{reverse('transcript_detail', args=[session_id])}?at={seq}#e-{seq}"


@login_required
@require_GET
def transcript_detail(request: AuthedRequest, session_id: int) -> HttpResponse:
    """The first page of blocks, or the page starting at the block of event ``at`` (or of
    the event being commented on)."""
    session, membership = services.get_transcript_for_user(request.user, session_id)
    view = transcript_view(session, show=request.GET.get("show", "all"))
    comment_seq = _int(request.GET.get("comment"))
    at = _int(request.GET.get("at"))
    return render(
        request,
        "transcripts/transcript_detail.html",
        {
            "view": view,
            "page": page(view, at=at if at is not None else comment_seq),
            "session": session,
            "project": session.project,
            "team": session.project.team,
            "membership": membership,
            "filters": FILTERS,
            "comment_seq": comment_seq,
            "read_only": services.is_read_only(session),
            "can_fork": membership.can_write and services.can_be_forked(session),
            "fork": Fork.objects.filter(session=session).first(),
            "forks": Fork.objects.filter(source=session).select_related("session", "project"),
        },
    )


@login_required
@require_GET
def transcript_blocks(request: AuthedRequest, session_id: int) -> HttpResponse:
    """The page of blocks after the block starting at seq ``after`` (or before the one at
    ``before``), as of event ``up_to`` (what the page loaded), with its sentinel."""
    session, membership = services.get_transcript_for_user(request.user, session_id)
    after, before, up_to = (_int(request.GET.get(k)) for k in ("after", "before", "up_to"))
    if up_to is None or (after is None) == (before is None):
        return HttpResponse("Give up_to and one of after or before (event numbers).", status=400)
    view = transcript_view(session, show=request.GET.get("show", "all"), up_to=up_to)
    return render(
        request,
        "transcripts/_page.html",
        {
            "view": view,
            "page": page(view, after=after, before=before),
            "session": session,
            "membership": membership,
            "can_fork": membership.can_write and services.can_be_forked(session),
        },
    )


@login_required
@require_GET
def transcript_news(request: AuthedRequest, session_id: int) -> HttpResponse:
    """The polled notice of events appended since the page was rendered (at ``seq``)."""
    session, _ = services.get_transcript_for_user(request.user, session_id)
    seen = _int(request.GET.get("seq")) or 0
    return render(
        request,
        "transcripts/_news.html",
        {"session": session, "seen": seen, "new": max(0, session.last_seq - seen)},
    )


def _filename(session: Session, ext: str) -> str:
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    return f"{slugify(session.title) or 'session'}-{session.pk}-{stamp}.{ext}"


@login_required
@require_GET
def transcript_export(
    request: AuthedRequest, session_id: int, fmt: str
) -> HttpResponse | StreamingHttpResponse:
    session, _ = services.get_transcript_for_user(request.user, session_id)
    response: HttpResponse | StreamingHttpResponse
    if fmt == "jsonl":
        response = StreamingHttpResponse(
            exchange.export_jsonl(session), content_type="application/x-ndjson; charset=utf-8"
        )
    elif fmt == BUNDLE_FORMAT:
        response = StreamingHttpResponse(
            exchange.export_checkpoints(session), content_type="application/x-tar"
        )
    elif fmt == "md":
        view = transcript_view(session)
        response = HttpResponse(
            exchange.export_markdown(view), content_type="text/markdown; charset=utf-8"
        )
    elif fmt == "html":
        view = transcript_view(session)
        css = ""
        for name in ("css/transcripts.css", "css/diffs.css"):
            css_path = finders.find(name)
            css += open(css_path, encoding="utf-8").read() if css_path else ""  # noqa: SIM115
        html = render_to_string(
            "transcripts/export.html",
            {
                "view": view,
                "session": session,
                "project": session.project,
                "team": session.project.team,
                "inline_css": css,
                "static_export": True,
            },
        )
        response = HttpResponse(html, content_type="text/html; charset=utf-8")
        response["Content-Security-Policy"] = EXPORT_CSP
    else:
        raise Http404("No such format.")
    response["Content-Disposition"] = f'attachment; filename="{_filename(session, fmt)}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_POST
def annotation_create(request: AuthedRequest, session_id: int) -> HttpResponse:
    session, membership = services.get_transcript_for_user(request.user, session_id)
    seq = _int(request.POST.get("seq"))
    if seq is None:
        raise Http404("No such event.")
    url = reverse("transcript_detail", args=[session.pk])
    try:
        services.add_annotation(membership, session, seq, request.POST.get("body", ""))
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect(f"{url}?comment={seq}#e-{seq}")
    return redirect(_at(session.pk, seq))


@login_required
@require_POST
def annotation_resolve(request: AuthedRequest, session_id: int, seq: int) -> HttpResponse:
    session, membership = services.get_transcript_for_user(request.user, session_id)
    resolved = request.POST.get("resolved", "1") == "1"
    annotation = services.set_annotation_resolved(membership, session, seq, resolved)
    return redirect(_at(session.pk, annotation.target_seq))


@login_required
@require_GET
def transcript_search(request: AuthedRequest, team_slug: str) -> HttpResponse:
    membership = get_membership_for_user(request.user, team_slug)
    query = request.GET.get("q", "")
    hits = search.search(membership, query) if query.strip() else []
    return render(
        request,
        "transcripts/search.html",
        {"team": membership.team, "membership": membership, "query": query, "hits": hits},
    )


def _import_refused(
    request: HttpRequest, message: str, team_slug: str, *, form_class: type[ImportForm] = ImportForm
) -> HttpResponse:
    """The import page with the refusal (413), for a file over the import limit."""
    if not request.user.is_authenticated:
        return plain_refusal(request, message)
    membership = get_membership_for_user(request.user, team_slug, write=True)
    form = form_class(projects=exchange.importable_projects(membership))
    context = {"team": membership.team, "membership": membership, "form": form,
               "errors": [message], "with_checkpoints": form_class is BundleImportForm}
    return render(request, "transcripts/import.html", context, status=413)


def _bundle_import_refused(request: HttpRequest, message: str, team_slug: str) -> HttpResponse:
    return _import_refused(request, message, team_slug, form_class=BundleImportForm)


@login_required
@require_http_methods(["GET", "POST"])
@upload_limit(exchange.import_limit_bytes, refuse=_import_refused)
def transcript_import(request: AuthedRequest, team_slug: str) -> HttpResponse:
    """Import a JSONL transcript (bounded by the transcript limit as it is read)."""
    return _import(request, team_slug, ImportForm)


@login_required
@require_http_methods(["GET", "POST"])
@upload_limit(exchange.import_request_limit_bytes, refuse=_bundle_import_refused)
def transcript_import_checkpoints(request: AuthedRequest, team_slug: str) -> HttpResponse:
    """Import a JSONL transcript with its checkpoint bundle (docs/checkpoints.md)."""
    return _import(request, team_slug, BundleImportForm)


def _import(request: AuthedRequest, team_slug: str, form_class: type[ImportForm]) -> HttpResponse:
    membership = get_membership_for_user(request.user, team_slug, write=True)
    projects = exchange.importable_projects(membership)
    form = form_class(request.POST or None, request.FILES or None, projects=projects)
    errors: list[str] = []
    status = 200
    if request.method == "POST":
        if form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                if upload.size > exchange.import_limit_bytes():
                    raise TranscriptInvalid(
                        [
                            f"The file is {upload.size} bytes; transcripts are limited to "
                            f"{exchange.import_limit_bytes()} bytes."
                        ]
                    )
                session = exchange.import_jsonl(
                    membership,
                    form.cleaned_data["project"],
                    upload.read(),
                    title=form.cleaned_data["title"],
                    bundle=form.cleaned_data.get("checkpoints"),
                )
            except TranscriptInvalid as exc:
                errors = exc.errors
            else:
                messages.success(request, f"Imported {session.last_seq} events.")
                return redirect("transcript_detail", session_id=session.pk)
        status = 422
    context = {"team": membership.team, "membership": membership, "form": form,
               "errors": errors, "with_checkpoints": form_class is BundleImportForm}
    return render(request, "transcripts/import.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def fork_create(request: AuthedRequest, session_id: int, position: int) -> HttpResponse:
    session, membership = services.get_transcript_for_user(request.user, session_id, write=True)
    if not services.can_be_forked(session):
        raise Http404("Imported transcripts cannot be forked without their checkpoints.")
    targets = forks.fork_targets(membership)
    form = ForkForm(request.POST or None, targets=targets, initial={"project": session.project_id})
    status = 200
    if request.method == "POST":
        if form.is_valid():
            project = next(p for p, _ in targets if p.pk == int(form.cleaned_data["project"]))
            try:
                fork = forks.fork_session(
                    membership,
                    session,
                    position,
                    project=project,
                    title=form.cleaned_data["title"],
                    replay=tasks.replay_fork.delay,
                )
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(request, "Forked: the later prompts are being replayed.")
                return redirect("fork_compare", session_id=fork.session_id)
        status = 422
    return render(
        request,
        "transcripts/fork_create.html",
        {
            "session": session,
            "project": session.project,
            "team": session.project.team,
            "position": position,
            "form": form,
        },
        status=status,
    )


@login_required
@require_GET
def fork_compare(request: AuthedRequest, session_id: int) -> HttpResponse:
    fork, membership = forks.get_fork_for_user(request.user, session_id)
    comparison = forks.compare_fork(fork)
    return render(
        request,
        "transcripts/comparison.html",
        {
            "comparison": comparison,
            "fork": fork,
            "session": fork.session,
            "team": fork.session.project.team,
            "project": fork.session.project,
            "membership": membership,
        },
    )
