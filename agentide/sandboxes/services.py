"""Sandbox workflows: the verbs the notebook, the agent loop and beat call.

Each verb takes a ``notebook.Session`` (or nothing, for the periodic jobs), talks to the
backend chosen by ``AGENTIDE_SANDBOX_BACKEND`` and keeps the ``Sandbox`` row in step. State
changes of a session's sandbox are appended to the session's event log
(``sandbox.state``). Backend failures surface as ``SandboxError`` with ``permanent`` set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, BinaryIO

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from agentide.events import registry
from agentide.events.log import append_event
from agentide.quotas import services as quotas
from agentide.sandboxes import conf
from agentide.sandboxes.backends import workspace_disk
from agentide.sandboxes.backends.base import (
    DirListing,
    ExecResult,
    FileStream,
    LeftoverProcess,
    OutputCallback,
    Pty,
    PtyOutput,
    SandboxBackend,
    SandboxError,
    SandboxHandle,
    SandboxLimits,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxSpec,
    SandboxStats,
)
from agentide.sandboxes.models import Sandbox
from agentide.sandboxes.runner.runner import bound_env

if TYPE_CHECKING:
    from agentide.projects.models import Project
    from agentide.sessions.models import Session

log = logging.getLogger(__name__)

_backends: dict[tuple[str, str, str, str, str, str], SandboxBackend] = {}
_backend_lock = threading.Lock()

# How long a worker waits for another worker that is creating the same session's sandbox.
CREATE_WAIT_S = 120.0


def get_backend() -> SandboxBackend:
    """The process-wide backend for the current settings (``AGENTIDE_SANDBOX_BACKEND``,
    ``AGENTIDE_SANDBOX_DOCKER_HOST``, ``AGENTIDE_SANDBOX_SITE``, the workspace disk
    settings); its engine connections and runner sockets are reused across calls."""
    key = (conf.backend_path(), conf.docker_host(), conf.site(), conf.workspace_disk(),
           conf.workspace_dir(), conf.workspace_disk_socket())
    backend = _backends.get(key)
    if backend is None:
        with _backend_lock:
            backend = _backends.get(key)
            if backend is None:
                cls = import_string(key[0])
                backend = cls(key[1] or None, site=key[2], workspace_disk=key[3],
                              workspace_dir=key[4], workspace_disk_socket=key[5])
                _backends[key] = backend
    return backend


# -- limits and profiles -------------------------------------------------------------------


def image_for(project: Project) -> str:
    """The project's image, or the site default; refuses images not on the allow-list."""
    image = (project.sandbox_image or "").strip() or conf.default_image()
    if not conf.image_allowed(image):
        raise SandboxError(f"image {image!r} is not allowed on this site", permanent=True)
    return image


def limits_for(project: Project) -> SandboxLimits:
    """The project's limits clamped to the site's ceilings (and its workspace size to the
    team quota's too)."""
    disk_mb = min(int(project.sandbox_disk_mb), conf.max_disk_mb())
    # The warm pool's default profile is a project of no team.
    team_disk_mb = None if project.team_id is None else quotas.workspace_disk_ceiling(
        project.team_id)
    if team_disk_mb is not None:
        disk_mb = min(disk_mb, team_disk_mb)
    cpus = float(project.sandbox_cpus if project.sandbox_cpus is not None else Decimal(1))
    return SandboxLimits(
        memory_mb=max(64, min(int(project.sandbox_memory_mb), conf.max_memory_mb())),
        cpus=max(0.1, min(cpus, conf.max_cpus())),
        pids_limit=max(16, min(int(project.sandbox_pids_limit), conf.max_pids())),
        tmp_mb=max(16, min(int(project.sandbox_tmp_mb), conf.max_tmp_mb())),
        nofile=conf.nofile(),
        fsize_mb=conf.fsize_mb(),
        runtime=conf.runtime(),
        disk_mb=max(workspace_disk.MIN_SIZE_MB, disk_mb),
    )


def timeout_for(project: Project, requested: float | None = None) -> float:
    """A command timeout: the request or the project default, at most the site maximum."""
    value = requested if requested else (project.command_timeout_s or conf.default_timeout_s())
    return float(max(1, min(value, conf.max_timeout_s())))


def profile_key(image: str, limits: SandboxLimits) -> str:
    """Warm-pool profile: sandboxes with equal keys are interchangeable."""
    blob = json.dumps({"image": image, **limits.as_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _labels(session: Session) -> dict[str, str]:
    project = session.project
    return {"team": str(project.team_id), "project": str(project.pk), "session": str(session.pk)}


# -- state changes -------------------------------------------------------------------------


def _record(sandbox: Sandbox, state: str, **detail: Any) -> None:
    """Append a ``sandbox.state`` event to the owning session's log (if there is one)."""
    if not sandbox.session_id:
        return
    payload = {"state": state, "container": sandbox.container_id[:12], **detail}
    try:
        append_event(sandbox.session_id, registry.SANDBOX_STATE, payload)
    except Exception:
        # The session may be being deleted; the state change itself is on the row.
        log.info("could not record sandbox state for session %s", sandbox.session_id,
                 exc_info=True)


def _set_state(sandbox: Sandbox, state: str, *, record: bool = True, **fields: Any) -> None:
    quotas.on_sandbox_state_change(sandbox, state)
    fields["state"] = state
    Sandbox.objects.filter(pk=sandbox.pk).update(**fields)
    for key, value in fields.items():
        setattr(sandbox, key, value)
    if record:
        _record(sandbox, state, **({"error": fields["error"]} if fields.get("error") else {}))


# -- ensure --------------------------------------------------------------------------------


def ensure_sandbox(session: Session, *, verify: bool = False) -> Sandbox:
    """The session's sandbox, running: created, claimed from the warm pool, or restarted.

    Without ``verify`` a row already marked running is trusted (no engine round trip);
    callers that then find the container gone call again with ``verify=True``. Safe to
    call from several workers at once: one creates, the others wait for it.
    Raises SandboxError when the engine cannot provide a sandbox.
    """
    quotas.check_can_start_sandbox(session)
    backend = get_backend()
    deadline = timezone.now() + dt.timedelta(seconds=CREATE_WAIT_S)
    while True:
        sandbox = Sandbox.objects.filter(session=session).first()
        if sandbox is None:
            claimed = _claim_from_pool(session)
            if claimed is not None:
                return claimed
            try:
                with transaction.atomic():
                    sandbox = Sandbox.objects.create(
                        session=session, state=Sandbox.State.CREATING,
                        image=image_for(session.project),
                    )
            except IntegrityError:
                continue  # another worker got there first; look again
            return _create_container(session, sandbox)

        if sandbox.state == Sandbox.State.RUNNING:
            if not verify:
                return sandbox
            try:
                if backend.is_running(sandbox.handle):
                    return sandbox
                return _start(sandbox)
            except SandboxNotFound:
                _set_state(sandbox, Sandbox.State.MISSING)
                continue
        if sandbox.state == Sandbox.State.STOPPED:
            try:
                return _start(sandbox)
            except SandboxNotFound:
                _set_state(sandbox, Sandbox.State.MISSING)
                continue
        if sandbox.state == Sandbox.State.CREATING:
            if timezone.now() > deadline:
                raise SandboxError("timed out waiting for the sandbox to be created",
                                   permanent=False)
            time.sleep(0.1)  # another worker is creating it: poll its row
            continue
        # destroyed, missing, error: make a new container in place, claiming the row.
        if Sandbox.objects.filter(pk=sandbox.pk, state=sandbox.state).update(
            state=Sandbox.State.CREATING, image=image_for(session.project),
            created_at=timezone.now(),
        ):
            sandbox.refresh_from_db()
            return _create_container(session, sandbox)


def _create_container(session: Session, sandbox: Sandbox) -> Sandbox:
    """Create the container of a row this worker has claimed (state ``creating``)."""
    project = session.project
    limits = limits_for(project)
    image = sandbox.image or image_for(project)
    # Keep the workspace of a container that vanished, when its volume survived.
    volume = sandbox.volume if sandbox.volume and sandbox.volume in _volumes() else ""
    spec = SandboxSpec(
        image=image,
        limits=limits,
        labels=_labels(session),
        name=f"agentide-s{session.pk}-{uuid.uuid4().hex[:8]}",
        volume=volume,
    )
    try:
        handle = get_backend().create(spec)
    except SandboxError as exc:
        _set_state(sandbox, Sandbox.State.ERROR, error=exc.message)
        raise
    now = timezone.now()
    _set_state(
        sandbox, Sandbox.State.RUNNING,
        container_id=handle.container_id, volume=handle.volume, image=image,
        limits=limits.as_dict(), profile=profile_key(image, limits),
        created_at=now, started_at=now, last_activity_at=now, stopped_at=None, error="",
    )
    return sandbox


def _volumes() -> set[str]:
    try:
        return set(get_backend().list_volumes())
    except SandboxError:
        return set()


def _start(sandbox: Sandbox) -> Sandbox:
    backend = get_backend()
    if sandbox.session is not None:
        # A project whose workspace limit was raised since: grow the kept workspace.
        disk_mb = limits_for(sandbox.session.project).disk_mb
        if 0 < int((sandbox.limits or {}).get("disk_mb") or 0) < disk_mb:
            try:
                backend.grow_workspace(sandbox.volume, disk_mb)
            except SandboxError:
                # The old size still works; the next start tries again.
                log.warning("could not grow the workspace of sandbox %s", sandbox.pk,
                            exc_info=True)
            else:
                sandbox.limits = {**(sandbox.limits or {}), "disk_mb": disk_mb}
                Sandbox.objects.filter(pk=sandbox.pk).update(limits=sandbox.limits)
    backend.start(sandbox.handle)
    now = timezone.now()
    _set_state(sandbox, Sandbox.State.RUNNING, started_at=now, last_activity_at=now,
               stopped_at=None, error="")
    return sandbox


def _claim_from_pool(session: Session) -> Sandbox | None:
    """Take a running pool member of the session's profile, or None.

    The conditional UPDATE makes the claim atomic across workers; the unique session
    column makes a second claim for the same session fail instead of wasting a member.
    """
    try:
        project = session.project
        limits = limits_for(project)
        key = profile_key(image_for(project), limits)
    except SandboxError:
        return None
    candidates = list(
        Sandbox.objects.filter(state=Sandbox.State.POOLED, profile=key, session__isnull=True)
        .order_by("created_at").values_list("pk", flat=True)[:5]
    )
    backend = get_backend()
    for pk in candidates:
        now = timezone.now()
        try:
            with transaction.atomic():
                won = Sandbox.objects.filter(
                    pk=pk, state=Sandbox.State.POOLED, session__isnull=True
                ).update(session=session, state=Sandbox.State.RUNNING, started_at=now,
                         last_activity_at=now)  # running time counts from the claim
        except IntegrityError:
            return None  # this session got a sandbox meanwhile
        if not won:
            continue
        sandbox = Sandbox.objects.get(pk=pk)
        try:
            running = backend.is_running(sandbox.handle)
        except SandboxNotFound:
            running = False
        if running:
            _record(sandbox, Sandbox.State.RUNNING, pool=True)
            return sandbox
        # A dead pool member: drop it and let the caller create a container.
        destroy_container(sandbox)
        Sandbox.objects.filter(pk=pk).delete()
        return None
    return None


# -- commands ------------------------------------------------------------------------------


def run_command(
    session: Session,
    command: str,
    *,
    command_id: str,
    timeout_s: float | None = None,
    on_output: OutputCallback,
) -> ExecResult:
    """Run ``command`` in the session's sandbox (starting or creating it first).

    ``on_output(stream, data)`` receives raw bytes as they arrive (decode with
    ``agentide.lib.output.StreamDecoder``). ``timeout_s`` defaults to the project's and is
    capped by ``AGENTIDE_SANDBOX_MAX_TIMEOUT_S``. Returns the outcome; raises SandboxError
    when the sandbox cannot run it. While it runs, the sandbox counts as active until the
    command's deadline, so the idle reaper leaves it alone.
    """
    timeout = timeout_for(session.project, timeout_s)
    sandbox = ensure_sandbox(session)
    backend = get_backend()
    for attempt in range(2):
        busy_until = timezone.now() + dt.timedelta(seconds=timeout + 60)
        Sandbox.objects.filter(pk=sandbox.pk).update(last_activity_at=busy_until)
        try:
            result = backend.exec(sandbox.handle, command, command_id=command_id,
                                  timeout_s=timeout, on_output=on_output)
            break
        except (SandboxNotRunning, SandboxNotFound):
            # Stopped or removed behind the row's back; the command never started.
            if attempt:
                raise
            sandbox = ensure_sandbox(session, verify=True)
    Sandbox.objects.filter(pk=sandbox.pk).update(last_activity_at=timezone.now())
    return result


def cancel_command(session: Session, command_id: str) -> bool:
    """Kill a running command of the session (from any worker). True if something died."""
    sandbox = Sandbox.objects.filter(session=session).first()
    if sandbox is None or sandbox.state != Sandbox.State.RUNNING:
        return False
    try:
        return get_backend().cancel(sandbox.handle, command_id)
    except (SandboxNotRunning, SandboxNotFound):
        return False


# -- terminals -----------------------------------------------------------------------------


def open_terminal(session: Session, terminal_id: str, *, rows: int, cols: int) -> Pty:
    """Open a terminal (a login shell on a PTY) in the session's sandbox, starting or
    creating the sandbox first. The PTY is bound to the calling process's connection: read
    it with ``read_terminal`` from that process, end it with ``close_terminal``. Raises
    SandboxError (permanent for a bad id or size)."""
    sandbox = ensure_sandbox(session)
    backend = get_backend()
    for attempt in range(2):
        try:
            pty = backend.open_pty(sandbox.handle, terminal_id, rows=rows, cols=cols)
            break
        except (SandboxNotRunning, SandboxNotFound):
            if attempt:
                raise
            sandbox = ensure_sandbox(session, verify=True)
    touch_sandbox(session)
    return pty


def touch_sandbox(session: Session) -> None:
    """Count the session's sandbox as active now (an open terminal in use is activity)."""
    Sandbox.objects.filter(session=session).update(last_activity_at=timezone.now())


def read_terminal(pty: Pty, timeout_s: float) -> PtyOutput | None:
    """The terminal's next output or its close; None after ``timeout_s``."""
    return get_backend().read_pty(pty, timeout_s)


def write_terminal(pty: Pty, data: bytes) -> None:
    get_backend().write_pty(pty, data)


def resize_terminal(pty: Pty, rows: int, cols: int) -> None:
    get_backend().resize_pty(pty, rows, cols)


def close_terminal(pty: Pty) -> None:
    get_backend().close_pty(pty)


# -- lifecycle -----------------------------------------------------------------------------


def stop_sandbox(session: Session) -> Sandbox | None:
    """Stop the session's container, keeping its workspace. None if it has no sandbox."""
    sandbox = Sandbox.objects.filter(session=session).first()
    if sandbox is None:
        return None
    _stop(sandbox)
    return sandbox


def _stop(sandbox: Sandbox) -> None:
    if sandbox.state != Sandbox.State.RUNNING:
        return
    try:
        get_backend().stop(sandbox.handle)
    except SandboxNotFound:
        _set_state(sandbox, Sandbox.State.MISSING)
        return
    _set_state(sandbox, Sandbox.State.STOPPED, stopped_at=timezone.now())


def destroy_sandbox(session: Session) -> Sandbox | None:
    """Remove the session's container and workspace volume (e.g. before deleting it)."""
    sandbox = Sandbox.objects.filter(session=session).first()
    if sandbox is None:
        return None
    destroy_container(sandbox)
    _set_state(sandbox, Sandbox.State.DESTROYED, container_id="", stopped_at=timezone.now())
    return sandbox


def copy_workspace(source: Session, target: Session) -> Sandbox:
    """Start ``target``'s sandbox with a copy of ``source``'s workspace (for a fork).

    Ensures the target's sandbox (running), then copies every file of the source's workspace
    volume into it; the source may be running or stopped. Raises SandboxError (permanent)
    when the source has no workspace any more, or when the copy fails.
    """
    row = Sandbox.objects.filter(session=source).first()
    if row is None or not row.volume or row.volume not in _volumes():
        raise SandboxError("The original session has no workspace to copy.", permanent=True)
    sandbox = ensure_sandbox(target)
    get_backend().copy_workspace(row.volume, sandbox.volume, image=row.image or sandbox.image,
                                 limits=limits_for(target.project))
    return sandbox


def destroy_container(sandbox: Sandbox) -> None:
    """Remove a row's container and volume on the engine (the row is left to the caller)."""
    if sandbox.container_id or sandbox.volume:
        get_backend().destroy(sandbox.handle)


def sandbox_stats(session: Session) -> SandboxStats | None:
    """CPU, memory and process count of the session's running sandbox (None otherwise)."""
    sandbox = Sandbox.objects.filter(session=session).first()
    if sandbox is None or sandbox.state != Sandbox.State.RUNNING:
        return None
    try:
        return get_backend().stats(sandbox.handle)
    except (SandboxNotFound, SandboxNotRunning):
        return None


# -- files ---------------------------------------------------------------------------------


def list_files(session: Session, path: str = "") -> DirListing:
    """Entries of a directory under /workspace, at most ``AGENTIDE_SANDBOX_MAX_LIST_ENTRIES``
    (``truncated`` says there were more). A session that never had a sandbox has no files
    (nothing is created for a listing); a stopped one is started."""
    if not Sandbox.objects.filter(session=session).exists():
        return DirListing([])
    return get_backend().list_dir(ensure_sandbox(session).handle, path,
                                  max_entries=conf.max_list_entries(),
                                  max_bytes=conf.max_list_bytes())


NO_CONTAINER = "This session's sandbox has no container to read files from (yet)."


def open_file(session: Session, path: str, *, max_bytes: int) -> FileStream:
    """Stream a regular file under /workspace out of the session's container, running or
    stopped. Reading never starts or creates a sandbox (a reviewer's download, or a link
    followed from another site, must not run anything). Raises SandboxNotFound when there
    is no container to read, FileTooLarge over ``max_bytes``, SandboxError otherwise."""
    sandbox = Sandbox.objects.filter(session=session).first()
    if sandbox is None or not sandbox.has_container:
        raise SandboxNotFound(NO_CONTAINER)
    return get_backend().open_file(sandbox.handle, path, max_bytes=max_bytes)


def read_file(session: Session, path: str, *, max_bytes: int | None = None) -> bytes:
    """A regular file under /workspace, at most ``max_bytes`` (site limit by default), read
    into memory; like ``open_file`` it never starts the sandbox."""
    limit = min(max_bytes or conf.max_read_bytes(), conf.max_read_bytes())
    stream = open_file(session, path, max_bytes=limit)
    try:
        return b"".join(stream.chunks)
    finally:
        stream.close()


def write_file(
    session: Session, path: str, data: bytes | BinaryIO, *, max_bytes: int | None = None
) -> None:
    """Create or replace a file under /workspace (owned by the sandbox user), from bytes or
    a seekable binary file, starting the sandbox if needed (callers check the writer)."""
    limit = min(max_bytes or conf.max_write_bytes(), conf.max_write_bytes())
    get_backend().write_file(ensure_sandbox(session).handle, path, data, max_bytes=limit)


@dataclass(frozen=True)
class PersistedEnvironment:
    """What later commands of a session get from /workspace/.agentide/env: the variables
    (name, value) the runner passes on, and the names it refuses or drops (written there by
    hand: loader/startup variables, or past the bounds)."""

    variables: list[tuple[str, str]]
    refused: list[str]
    dropped: list[str]


ENV_FILE_MAX_BYTES = 1024 * 1024


def persisted_environment(session: Session) -> tuple[PersistedEnvironment | None, str]:
    """The session's persisted environment and an error message ("" when fine).

    Read from the running sandbox only: showing it never starts a container. A sandbox
    where nothing was exported yet has an empty environment.
    """
    sandbox = Sandbox.objects.filter(session=session).first()
    if sandbox is None or sandbox.state != Sandbox.State.RUNNING:
        return None, "The sandbox is not running; it starts with the next command."
    backend = get_backend()
    try:
        names = {e.name for e in backend.list_dir(sandbox.handle, ".agentide")}
    except SandboxError:
        names = set()
    if "env" not in names:
        return PersistedEnvironment([], [], []), ""
    try:
        data = backend.read_file(sandbox.handle, ".agentide/env",
                                 max_bytes=ENV_FILE_MAX_BYTES)
    except SandboxError as exc:
        return None, f"Cannot read the environment: {exc.message}"
    kept, refused, dropped = bound_env(data)
    variables = []
    for item in kept:
        name, _, value = item.partition(b"=")
        variables.append((name.decode(errors="replace"), value.decode(errors="replace")))
    return PersistedEnvironment(variables, refused, dropped), ""


def leftover_processes(session: Session) -> list[LeftoverProcess] | None:
    """Processes in the session's running sandbox that outlived their command (None when
    no sandbox runs: listing never starts one). Kill them with ``cancel_command``."""
    sandbox = Sandbox.objects.filter(session=session).first()
    if sandbox is None or sandbox.state != Sandbox.State.RUNNING:
        return None
    try:
        return get_backend().leftover_processes(sandbox.handle)
    except (SandboxNotFound, SandboxNotRunning):
        return None


# -- periodic jobs -------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    removed_containers: list[str] = field(default_factory=list)
    removed_volumes: list[str] = field(default_factory=list)
    marked_missing: list[int] = field(default_factory=list)


def reconcile(*, now: dt.datetime | None = None) -> ReconcileReport:
    """Bring engine and database together, by label; never touches unlabelled containers.

    - a labelled container with no row, older than the grace period: removed (with volume);
    - a container whose session was deleted, or past the maximum age: removed;
    - a row whose container vanished: marked ``missing`` (re-created on next need);
    - a labelled volume no container or live row uses, older than the grace period: removed;
    - a row stuck in ``creating`` past the grace period: marked ``error``.
    """
    now = now or timezone.now()
    grace = dt.timedelta(seconds=conf.orphan_grace_s())
    max_age = dt.timedelta(seconds=conf.max_age_s())
    backend = get_backend()
    report = ReconcileReport()
    # A worker that died while creating a container leaves its row in "creating"; an
    # error state lets the next need create it again (its container, if any, is an
    # orphan without a row and goes below).
    Sandbox.objects.filter(state=Sandbox.State.CREATING, created_at__lt=now - grace).update(
        state=Sandbox.State.ERROR, error="The sandbox was not created in time."
    )
    listings = backend.list_sandboxes()
    rows = {
        s.container_id: s
        for s in Sandbox.objects.exclude(container_id="").filter(state__in=Sandbox.LIVE)
    }
    for listing in listings:
        row = rows.get(listing.container_id)
        orphan = row is None and listing.created < now - grace
        abandoned = row is not None and row.session_id is None and row.state != Sandbox.State.POOLED
        # Past its maximum age, but never in the middle of a command (whose deadline is
        # in last_activity_at while it runs).
        expired = (row is not None and row.is_past_max_age(now, max_age)
                   and (row.last_activity_at is None or row.last_activity_at < now))
        if not (orphan or abandoned or expired):
            continue
        log.info("reconcile: removing sandbox %s (%s)", listing.name,
                 "orphan" if orphan else "abandoned" if abandoned else "expired")
        try:
            backend.destroy(SandboxHandle(listing.container_id, listing.volume))
        except SandboxError:
            log.warning("reconcile: could not remove %s", listing.name, exc_info=True)
            continue
        report.removed_containers.append(listing.container_id)
        if row is not None:
            if row.session_id is None:
                row.delete()
            else:
                _set_state(row, Sandbox.State.DESTROYED, container_id="", stopped_at=now)

    present = {listing.container_id for listing in listings}
    for container_id, row in rows.items():
        if container_id in present or row.created_at > now - grace / 10:
            continue
        if row.session_id is None:
            row.delete()  # a vanished pool member
            continue
        _set_state(row, Sandbox.State.MISSING)
        report.marked_missing.append(row.pk)

    # Rows of deleted sessions whose container is gone carry nothing worth keeping.
    Sandbox.objects.filter(session__isnull=True).exclude(state__in=Sandbox.LIVE).delete()

    in_use = {listing.volume for listing in backend.list_sandboxes()}
    # A missing or failed sandbox's volume is its kept workspace, re-used on the next need.
    keep_states = [*Sandbox.LIVE, Sandbox.State.MISSING, Sandbox.State.ERROR]
    in_use |= set(Sandbox.objects.filter(state__in=keep_states, session__isnull=False)
                  .values_list("volume", flat=True))
    for name, labels in backend.list_volumes().items():
        if name in in_use:
            continue
        created = _parse_time(labels.get("created"))
        if created is None or created > now - grace:
            continue
        try:
            backend.remove_volume(name)
            report.removed_volumes.append(name)
        except SandboxError:
            log.warning("reconcile: could not remove volume %s", name, exc_info=True)
    return report


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def stop_idle_sandboxes(*, now: dt.datetime | None = None) -> int:
    """Stop running sandboxes idle longer than ``AGENTIDE_SANDBOX_IDLE_STOP_S``."""
    now = now or timezone.now()
    idle_after = dt.timedelta(seconds=conf.idle_stop_s())
    stopped = 0
    for sandbox in Sandbox.objects.filter(state=Sandbox.State.RUNNING,
                                          session__isnull=False,
                                          last_activity_at__lt=now - idle_after):
        if not sandbox.is_idle(now, idle_after):
            continue
        try:
            _stop(sandbox)
            stopped += 1
        except SandboxError:
            log.warning("could not stop idle sandbox %s", sandbox.pk, exc_info=True)
    return stopped


def purge_site_sandboxes() -> int:
    """Remove every container and volume of this site (``AGENTIDE_SANDBOX_SITE``) from the
    engine, whatever the database says. For test teardown and uninstalling; returns how
    many containers were removed."""
    backend = get_backend()
    listings = backend.list_sandboxes()
    for listing in listings:
        backend.destroy(SandboxHandle(listing.container_id, listing.volume))
    for volume in backend.list_volumes():
        backend.remove_volume(volume)
    return len(listings)


def default_profile() -> tuple[str, SandboxLimits]:
    """Image and limits of a project left at its defaults: what the warm pool serves."""
    from agentide.projects.models import Project

    project = Project()
    return image_for(project), limits_for(project)


def refill_warm_pool() -> int:
    """Create pool members until ``AGENTIDE_SANDBOX_WARM_POOL_SIZE`` are ready; returns how
    many were created. Members of stale profiles (settings changed) are removed."""
    image, limits = default_profile()
    key = profile_key(image, limits)
    for stale in Sandbox.objects.filter(state=Sandbox.State.POOLED).exclude(profile=key):
        if Sandbox.objects.filter(pk=stale.pk, state=Sandbox.State.POOLED).update(
            state=Sandbox.State.DESTROYED
        ):
            try:
                destroy_container(stale)
            except SandboxError:
                log.warning("could not remove stale pool member %s", stale.pk, exc_info=True)
            Sandbox.objects.filter(pk=stale.pk).delete()
    have = Sandbox.objects.filter(state=Sandbox.State.POOLED, profile=key).count()
    created = 0
    for _ in range(max(0, conf.warm_pool_size() - have)):
        handle = get_backend().create(SandboxSpec(
            image=image, limits=limits, labels={"pool": "1", "profile": key},
            name=f"agentide-pool-{uuid.uuid4().hex[:12]}",
        ))
        now = timezone.now()
        Sandbox.objects.create(
            state=Sandbox.State.POOLED, container_id=handle.container_id, volume=handle.volume,
            image=image, limits=limits.as_dict(), profile=key, created_at=now, started_at=now,
        )
        created += 1
    return created
