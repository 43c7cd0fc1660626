"""Containers of the API (``/v1/containers``): each one is a session of the key's project,
driven by the API, with its sandbox and ``/workspace``.

The sandbox starts on first need (a file upload, a shell call), under the same quota
admission as in the browser. A container idle for its ``expires_after`` minutes expires: the
beat sweep (or the next use, whichever comes first) ends its session and stops its sandbox.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import secrets
import shlex
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Max, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from agentide.api.auth import ApiCaller
from agentide.api.errors import ApiError
from agentide.api.models import ApiContainer, ContainerFile
from agentide.events import registry
from agentide.events.log import append_event
from agentide.quotas import services as quotas
from agentide.quotas.services import QuotaExceeded
from agentide.sandboxes import conf as sandbox_conf
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes import workspace
from agentide.sandboxes.backends.base import FileStream, SandboxError
from agentide.sandboxes.models import Sandbox
from agentide.sessions import services as sessions
from agentide.sessions.models import Cell, Session

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_MINUTES = 20
MAX_EXPIRES_MINUTES = 24 * 60
MAX_NAME_CHARS = 256
MEMORY_LIMITS_MB = {"1g": 1024, "4g": 4096, "16g": 16384, "64g": 65536}
MAX_PAGE = 100
DEFAULT_PAGE = 20


def new_public_id(prefix: str) -> str:
    """An opaque, unguessable id (160 random bits)."""
    return f"{prefix}_{secrets.token_hex(20)}"


def to_unix(moment: dt.datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


# --- access -------------------------------------------------------------------------------------


def project_containers(caller: ApiCaller) -> QuerySet[ApiContainer]:
    """The containers of the caller's project that were not deleted."""
    return (
        ApiContainer.objects.filter(session__project=caller.project)
        .exclude(status=ApiContainer.Status.DELETED)
        .select_related("session", "session__project", "key")
    )


def get_container(caller: ApiCaller, container_id: str) -> ApiContainer:
    """The caller's container ``container_id``; Http404 for an unknown id, a deleted
    container, or one of another project or team (all look the same)."""
    container = project_containers(caller).filter(public_id=str(container_id)[:64]).first()
    if container is None:
        raise Http404(f"No container found with id '{str(container_id)[:80]}'.")
    return container


def require_running(container: ApiContainer, *, now: dt.datetime | None = None) -> None:
    """Refuse to use an expired container (409), expiring it first when it is past due or
    its session was ended (by an operator, say)."""
    if container.status == ApiContainer.Status.RUNNING and should_expire(container, now=now):
        expire_container(container)
    if container.status != ApiContainer.Status.RUNNING:
        raise ApiError(
            409,
            f"Container {container.public_id} has expired: it was idle for "
            f"{container.expires_after_minutes} minutes, or its session was ended. Create a "
            "new container.",
            param="container_id",
            code="container_expired",
        )


def use_container(caller: ApiCaller, container_id: str) -> ApiContainer:
    """The caller's container, to run something in: Http404 as ``get_container``, ApiError
    409 when it has expired; its idle time counts from now."""
    container = get_container(caller, container_id)
    require_running(container)
    touch_container(container)
    return container


def touch_container(container: ApiContainer) -> None:
    """Record activity: the container's idle time counts from now."""
    now = timezone.now()
    ApiContainer.objects.filter(pk=container.pk).update(last_active_at=now)
    container.last_active_at = now


def touch_if_running(container: ApiContainer) -> None:
    """Record activity on a container that is still running; one past due expires instead
    (reading an expired container's files never brings it back)."""
    if container.status != ApiContainer.Status.RUNNING:
        return
    if should_expire(container):
        expire_container(container)
    else:
        touch_container(container)


# --- the container object -----------------------------------------------------------------------


def container_object(container: ApiContainer) -> dict[str, Any]:
    """The container as the openai SDK parses it (``ContainerCreateResponse`` & co.)."""
    return {
        "id": container.public_id,
        "object": "container",
        "created_at": to_unix(container.created_at),
        "status": container.status,
        "expires_after": {"anchor": "last_active_at", "minutes": container.expires_after_minutes},
        "last_active_at": to_unix(container.last_active_at),
        "memory_limit": container.memory_limit or None,
        "name": container.name,
        # Sandboxes have no network (the site's hardening); no allow-list is offered.
        "network_policy": {"type": "disabled"},
    }


def page_object(items: Sequence[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """A cursor page as the SDK's ``SyncCursorPage`` reads it."""
    return {
        "object": "list",
        "data": list(items),
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def page_params(params: Any) -> tuple[int, bool, str]:
    """``(limit, ascending, after)`` from a list request's query; ValidationError when bad."""
    raw_limit = params.get("limit", str(DEFAULT_PAGE))
    try:
        limit = int(raw_limit)
    except (TypeError, ValueError):
        raise ValidationError({"limit": f"limit must be an integer from 1 to {MAX_PAGE}."}) \
            from None
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError({"limit": f"limit must be an integer from 1 to {MAX_PAGE}."})
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ValidationError({"order": "order must be 'asc' or 'desc'."})
    return limit, order == "asc", str(params.get("after", ""))[:80]


def paginate(
    rows: QuerySet[Any], *, limit: int, ascending: bool, after: str
) -> tuple[list[Any], bool]:
    """One page of ``rows`` (which have ``public_id``, ``created_at`` and ``pk``) ordered by
    creation, starting after the row ``after``; ValidationError for an unknown cursor."""
    fields = ("created_at", "pk") if ascending else ("-created_at", "-pk")
    rows = rows.order_by(*fields)
    if after:
        cursor = rows.filter(public_id=after).first()
        if cursor is None:
            raise ValidationError({"after": f"No object with id '{after}' to list after."})
        op = "gt" if ascending else "lt"
        rows = rows.filter(
            Q(**{f"created_at__{op}": cursor.created_at})
            | Q(created_at=cursor.created_at, **{f"pk__{op}": cursor.pk})
        )
    page = list(rows[: limit + 1])
    return page[:limit], len(page) > limit


# --- verbs --------------------------------------------------------------------------------------


def effective_memory_mb(caller: ApiCaller) -> int:
    """The memory (MiB) the project's sandboxes run with: its setting under the site's cap."""
    return min(int(caller.project.sandbox_memory_mb), sandbox_conf.max_memory_mb())


def check_memory_limit(caller: ApiCaller, memory_limit: object) -> str:
    """``memory_limit`` checked against the project's sandbox memory ("" for None).
    Containers run with the project's limit; asking for more than it is refused, asking for
    less is accepted (the container then has the project's memory, which is more)."""
    if memory_limit is None or memory_limit == "":
        return ""
    if not isinstance(memory_limit, str) or memory_limit not in MEMORY_LIMITS_MB:
        raise ValidationError({"memory_limit": (
            f"memory_limit must be one of {', '.join(MEMORY_LIMITS_MB)}."
        )})
    allowed = effective_memory_mb(caller)
    if MEMORY_LIMITS_MB[memory_limit] > allowed:
        raise ValidationError({"memory_limit": (
            f"memory_limit {memory_limit} ({MEMORY_LIMITS_MB[memory_limit]} MiB) is above the "
            f"{allowed} MiB that project {caller.project.name}'s sandboxes have. Ask for "
            "less, or ask a team admin to raise the project's sandbox memory."
        )})
    return memory_limit


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError({"name": "name is required: a non-empty string."})
    if len(name) > MAX_NAME_CHARS:
        raise ValidationError({"name": f"name has at most {MAX_NAME_CHARS} characters."})
    return name.strip()


def check_minutes(minutes: object) -> int:
    if (not isinstance(minutes, int) or isinstance(minutes, bool)
            or not 1 <= minutes <= MAX_EXPIRES_MINUTES):
        raise ValidationError({"expires_after": (
            f"expires_after.minutes must be an integer from 1 to {MAX_EXPIRES_MINUTES}."
        )})
    return minutes


def clean_create(body: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``create_container`` from a create request's JSON body, or
    ValidationError naming the field. What the API cannot honour is refused, not ignored."""
    minutes = DEFAULT_EXPIRES_MINUTES
    expires = body.get("expires_after")
    if expires is not None:
        if not isinstance(expires, dict) or expires.get("anchor") != "last_active_at":
            raise ValidationError({"expires_after": (
                "expires_after must be {\"anchor\": \"last_active_at\", \"minutes\": N}."
            )})
        minutes = check_minutes(expires.get("minutes"))
    if body.get("file_ids"):
        raise ValidationError({"file_ids": (
            "file_ids (the OpenAI Files API) is not supported: create the container, then "
            "upload each file to it with POST /v1/containers/{id}/files (multipart 'file')."
        )})
    if body.get("skills"):
        raise ValidationError({"skills": "skills are not supported by this server."})
    policy = body.get("network_policy")
    if policy is not None and (not isinstance(policy, dict) or policy.get("type") != "disabled"):
        raise ValidationError({"network_policy": (
            "Containers here have no network: only network_policy {\"type\": \"disabled\"} "
            "is accepted."
        )})
    return {"name": check_name(body.get("name")), "expires_after_minutes": minutes,
            "memory_limit": body.get("memory_limit")}


def create_container(
    caller: ApiCaller,
    *,
    name: str,
    expires_after_minutes: int = DEFAULT_EXPIRES_MINUTES,
    memory_limit: str | None = None,
) -> ApiContainer:
    """Open a new API-driven session in the caller's project and return its container.

    Raises ValidationError for a blank or long name, minutes out of range, or a
    ``memory_limit`` above the project's sandbox memory (``check_memory_limit``), and
    QuotaExceeded when the team may not open another session (suspended, or at its session
    limit), exactly as a new session in the browser."""
    name = check_name(name)
    minutes = check_minutes(expires_after_minutes)
    memory = check_memory_limit(caller, memory_limit)
    with transaction.atomic():
        session = sessions.create_session(caller.membership, caller.project, name[:120])
        Session.objects.filter(pk=session.pk).update(api_key_name=caller.key.name)
        return ApiContainer.objects.create(
            public_id=new_public_id("cntr"),
            session=session,
            key=caller.key,
            name=name,
            expires_after_minutes=minutes,
            memory_limit=memory,
        )


def list_containers(
    caller: ApiCaller, *, limit: int, ascending: bool, after: str, name: str = ""
) -> tuple[list[ApiContainer], bool]:
    """A page of the project's containers (``name`` filters exactly) and whether more follow."""
    rows = project_containers(caller)
    if name:
        rows = rows.filter(name=name)
    return paginate(rows, limit=limit, ascending=ascending, after=after)


def end_container_session(container: ApiContainer, message: str) -> None:
    """Mark the container's session ended and say why in its log (no-op if it already was)."""
    with transaction.atomic():
        if Session.objects.filter(pk=container.session_id,
                                  status=Session.Status.ACTIVE).update(
                                      status=Session.Status.ENDED):
            append_event(container.session_id, registry.SESSION_ENDED, {"message": message})


def delete_container(container: ApiContainer) -> None:
    """Delete the container: its sandbox and workspace are removed and its session ends
    (kept, with its transcript, in the project's session list). Its id answers 404 after."""
    if not ApiContainer.objects.filter(pk=container.pk).exclude(
        status=ApiContainer.Status.DELETED
    ).update(status=ApiContainer.Status.DELETED):
        return
    container.status = ApiContainer.Status.DELETED
    end_container_session(container, "The API deleted this container.")
    try:
        sandboxes.destroy_sandbox(container.session)
    except SandboxError:
        log.warning("container %s: sandbox not removed now; reconcile will", container.pk)


# --- expiry -------------------------------------------------------------------------------------


def last_active(container: ApiContainer) -> dt.datetime:
    """The latest activity of the container: API calls, or commands in its sandbox (a
    teammate's cells count too)."""
    sandbox_active = (
        Sandbox.objects.filter(session_id=container.session_id)
        .aggregate(at=Max("last_activity_at"))["at"]
    )
    if sandbox_active is None:
        return container.last_active_at
    return max(container.last_active_at, sandbox_active)


def should_expire(container: ApiContainer, *, now: dt.datetime | None = None) -> bool:
    """Whether a running container is to expire now: idle past its time, or its session was
    ended some other way."""
    ended = Session.objects.filter(pk=container.session_id).exclude(
        status=Session.Status.ACTIVE
    ).exists()
    return ended or is_due(container, now=now)


def is_due(container: ApiContainer, *, now: dt.datetime | None = None) -> bool:
    """Whether the container has been idle past its ``expires_after`` (work queued or
    running in its session keeps it alive)."""
    now = now or timezone.now()
    deadline = last_active(container) + dt.timedelta(minutes=container.expires_after_minutes)
    if deadline > now:
        return False
    busy = Cell.objects.filter(session_id=container.session_id,
                               status__in=(Cell.Status.QUEUED, Cell.Status.RUNNING))
    return not busy.exists()


def expire_container(container: ApiContainer) -> bool:
    """Expire a running container: its session ends and its sandbox stops (the workspace is
    kept for the transcript's sake until the session is deleted). False if it was not
    running, or was touched since ``container`` was read."""
    # Only if nobody touched it since it was found idle.
    if not ApiContainer.objects.filter(
        pk=container.pk, status=ApiContainer.Status.RUNNING,
        last_active_at=container.last_active_at,
    ).update(status=ApiContainer.Status.EXPIRED):
        container.refresh_from_db(fields=["status"])
        return False
    container.status = ApiContainer.Status.EXPIRED
    end_container_session(
        container,
        f"The API container expired after {container.expires_after_minutes} minutes "
        "without activity.",
    )
    try:
        sandboxes.stop_sandbox(container.session)
    except SandboxError:
        log.warning("container %s: sandbox not stopped now; idle stop will", container.pk)
    return True


def expire_idle_containers(*, now: dt.datetime | None = None) -> int:
    """The beat's sweep: expire every running container idle past its ``expires_after``.
    Returns how many expired."""
    now = now or timezone.now()
    # Running containers are bounded by the teams' session quotas and each one's idle time
    # depends on its sandbox too: every one is checked.
    candidates: Iterable[ApiContainer] = (
        ApiContainer.objects.filter(status=ApiContainer.Status.RUNNING)
        .select_related("session", "session__project")
        .order_by("last_active_at")
        .iterator()
    )
    expired = 0
    for container in candidates:
        if should_expire(container, now=now) and expire_container(container):
            expired += 1
    return expired


# --- files --------------------------------------------------------------------------------------


WORKSPACE = "/workspace"
# A listing walks at most this many directories and remembers at most this many files.
MAX_LIST_DIRS = 200
MAX_FILES = 2000


def max_upload_bytes() -> int:
    return int(settings.AGENTIDE_SANDBOX_MAX_WRITE_BYTES)


def max_download_bytes() -> int:
    return int(settings.AGENTIDE_MAX_DOWNLOAD_MB) * 1024 * 1024


def file_object(file: ContainerFile) -> dict[str, Any]:
    """The file as the SDK parses it (``FileCreateResponse`` & co.)."""
    return {
        "id": file.public_id,
        "object": "container.file",
        "bytes": file.bytes,
        "container_id": file.container.public_id,
        "created_at": to_unix(file.created_at),
        "path": f"{WORKSPACE}/{file.path}",
        "source": file.source,
    }


def upload_name(name: str) -> str:
    """The workspace path an uploaded file's name gives (its last component); ValidationError
    for a name that names no file."""
    base = posixpath.basename((name or "").replace("\\", "/")).strip()
    if not base or base in (".", "..") or "\x00" in base or len(base) > 255:
        raise ValidationError({"file": "The uploaded file needs a file name (at most 255 "
                                       "characters, no '/', not '.' or '..')."})
    return base


def upload_file(caller: ApiCaller, container: ApiContainer, upload: UploadedFile) -> ContainerFile:
    """Write ``upload`` to ``/workspace/<its name>`` (replacing a file of that name), starting
    the sandbox under the team's quota admission; return its row. ValidationError when the
    write fails (QuotaExceeded when a quota refuses the start)."""
    require_running(container)
    path = upload_name(upload.name or "")
    session = container.session
    try:
        sandboxes.write_file(session, path, cast(BinaryIO, upload),
                             admission=quotas.sandbox_admission(session),
                             max_bytes=max_upload_bytes())
    except QuotaExceeded:
        raise
    except Exception as exc:
        raise ValidationError(
            f"Upload to {WORKSPACE}/{path} failed: {getattr(exc, 'message', exc)}"
        ) from exc
    touch_container(container)
    now = timezone.now()
    file, created = ContainerFile.objects.get_or_create(
        container=container, path=path,
        defaults={"public_id": new_public_id("cfile"), "bytes": upload.size or 0,
                  "source": ContainerFile.Source.USER, "created_at": now},
    )
    if not created:
        ContainerFile.objects.filter(pk=file.pk).update(
            bytes=upload.size or 0, source=ContainerFile.Source.USER
        )
        file.refresh_from_db()
    return file


def workspace_files(session: Session) -> tuple[dict[str, int], bool] | None:
    """``({path: size}, complete)`` of the regular files under /workspace, walking at most
    ``MAX_LIST_DIRS`` directories; None when the sandbox is not running (nothing is started
    to list files)."""
    if sandboxes.sandbox_state(session) != Sandbox.State.RUNNING:
        return None
    found: dict[str, int] = {}
    pending = [""]
    walked = 0
    complete = True
    while pending:
        if walked >= MAX_LIST_DIRS or len(found) >= MAX_FILES:
            complete = False
            break
        directory = pending.pop(0)
        walked += 1
        try:
            listing = sandboxes.list_files(session, directory)
        except SandboxError:
            return None
        complete = complete and not listing.truncated
        for entry in listing:
            if not directory and entry.name == ".agentide":
                continue  # the runner's state, not the user's files
            if entry.kind == "dir":
                pending.append(entry.path)
            elif entry.kind == "file":
                found[entry.path] = entry.size
    return found, complete


def sync_files(container: ApiContainer) -> None:
    """Bring the container's file rows in line with its running workspace: files made by
    commands get rows (source "assistant"), sizes are refreshed, removed files are dropped.
    A stopped sandbox is left as it is (its rows stand)."""
    listed = workspace_files(container.session)
    if listed is None:
        return
    found, complete = listed
    rows = {row.path: row for row in ContainerFile.objects.filter(container=container)}
    now = timezone.now()
    new = [
        ContainerFile(container=container, path=path, bytes=size, created_at=now,
                      public_id=new_public_id("cfile"), source=ContainerFile.Source.ASSISTANT)
        for path, size in sorted(found.items())
        if path not in rows and len(path) <= 1024
    ]
    ContainerFile.objects.bulk_create(new, ignore_conflicts=True)
    for path, row in rows.items():
        if path in found and found[path] != row.bytes:
            ContainerFile.objects.filter(pk=row.pk).update(bytes=found[path])
    if complete:
        gone = [row.pk for path, row in rows.items() if path not in found]
        ContainerFile.objects.filter(pk__in=gone).delete()


def list_container_files(
    container: ApiContainer, *, limit: int, ascending: bool, after: str
) -> tuple[list[ContainerFile], bool]:
    """A page of the container's files (after syncing them with its workspace)."""
    sync_files(container)
    rows = ContainerFile.objects.filter(container=container).select_related("container")
    return paginate(rows, limit=limit, ascending=ascending, after=after)


def get_file(container: ApiContainer, file_id: str) -> ContainerFile:
    """The container's file ``file_id``; Http404 for any other id."""
    file = (
        ContainerFile.objects.filter(container=container, public_id=str(file_id)[:64])
        .select_related("container")
        .first()
    )
    if file is None:
        raise Http404(f"No file found with id '{str(file_id)[:80]}' in this container.")
    return file


def open_file(file: ContainerFile) -> FileStream:
    """Stream the file's bytes out of the container (running or stopped; never starts it).
    ApiError when it is over the download limit or there is no container to read; Http404
    when the file is gone."""
    try:
        return workspace.open_workspace_file(file.container.session, file.path,
                                             max_bytes=max_download_bytes())
    except workspace.DownloadRefused as exc:
        code = "file_too_large" if exc.status == 403 else "no_container"
        raise ApiError(exc.status, exc.message, code=code) from exc


def delete_file(container: ApiContainer, file: ContainerFile) -> None:
    """Remove the file from the workspace (starting the sandbox under the quota admission
    if needed) and forget it."""
    require_running(container)
    session = container.session
    target = shlex.quote(f"{WORKSPACE}/{file.path}")
    try:
        result = sandboxes.run_command(
            session, f"rm -f -- {target}", command_id=f"api-rm-{secrets.token_hex(8)}",
            admission=quotas.sandbox_admission(session), timeout_s=30,
            on_output=lambda stream, data: None,
        )
    except QuotaExceeded:
        raise
    except SandboxError as exc:
        raise ValidationError(f"Could not delete {WORKSPACE}/{file.path}: {exc}") from exc
    if result.exit_code not in (0, None):
        raise ValidationError(f"Could not delete {WORKSPACE}/{file.path} "
                              f"(rm exited with {result.exit_code}).")
    file.delete()
    touch_container(container)
