"""Running cells: submit, cancel, the per-session scheduler, start and finish, the lease, expiry.

Scheduling. Cells that need work (shell commands, prompts, and any kind an app registers with
``register_runner``) wait ``queued`` in their session in position order. Submitting one, and a
lease expiring, sends the session's scheduler task (``SCHEDULER_TASK``, declared in tasks.py)
once the transaction commits. The task runs ``run_queued_cells``: it claims the session's next
queued cell (only while no cell of the session runs, under the session row's lock), runs it
with the runner registered for its kind, records how it ended, and goes on with the next cell
at once: it loops into a shell cell, and hands a prompt (a turn may last up to the task's time
limit) to a fresh scheduler task it sends right away, so each turn gets the whole limit.
Concurrent or redelivered tasks of one session find a cell running, or nothing queued, and
return at once: nobody retries or sleeps waiting for its turn.

Queues. Every scheduler task goes to the default queue, prompts included. The cells of one
session are strictly sequential, so a session never holds more than one worker slot whatever
it runs. A queue of their own for prompts would keep other sessions' shell cells from waiting
behind many long turns, at the price of a second worker pool to size and deploy; it is not
needed while the pool (``AGENTIDE_WORKER_CONCURRENCY``) is sized for the sessions that run
something at once, and would be a small routing change here (every prompt after another cell
already starts in a task of its own). Terminal pumps, which last for hours, keep their queue.

Checkpoints. Before a shell or prompt cell's runner starts, and after it returns (a prompt's
turn ended), a checkpoint of /workspace is taken and said in the log (``cell.checkpoint``),
as part of the cell's time (``record_checkpoint``). A restore cell (its source: a checkpoint
id of the session) makes /workspace that checkpoint again; the checkpoint it takes first is
its "before", so restoring that one undoes it (``run_restore``).

One lease. A running cell belongs to the worker that claimed it while its lease is fresh.
``CellLease.check`` renews it and notices cancel requests; it runs on the thread of the
cell's ``OutputPump`` (``tick``), so a running cell costs the caller's thread and one pump
thread, each with one database connection. A worker that dies stops renewing; the beat task
``expire_stale_cells`` then ends the cell ``interrupted`` and wakes the session's scheduler.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection, transaction
from django.http import Http404
from django.utils import timezone

from agentide.accounts.models import Membership, User
from agentide.accounts.services import require
from agentide.events import registry
from agentide.events.log import append_event
from agentide.events.models import Event
from agentide.lib.ansi import StyleTracker
from agentide.lib.output import CappedOutput, StreamDecoder
from agentide.quotas import services as quotas
from agentide.sandboxes import checkpoints
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.checkpoints import CheckpointError, CheckpointResult
from agentide.sandboxes.models import Checkpoint, Sandbox
from agentide.sessions import services
from agentide.sessions.models import Cell, Session
from agentide.sessions.services import get_cell

log = logging.getLogger(__name__)

SCHEDULER_TASK = "agentide.sessions.tasks.run_session_cells"
NO_MODEL_MESSAGE = "No model is configured for this project yet."
NO_RUNNER_MESSAGE = "Nothing on this site runs {kind} cells."
INTERRUPTED_MESSAGE = (
    "The worker running this command stopped responding (its lease expired), so the command "
    "was interrupted. Its output up to that point is kept above."
)


@dataclass
class CellResult:
    """How a runner's work on a cell ended; ``finish_cell`` records it."""

    status: str
    outcome: str = ""
    exit_code: int | None = None
    error: str = ""
    output: CappedOutput | None = None
    reported_by: dict[str, Any] | None = None


Runner = Callable[[Cell], CellResult]

# kind -> the callable that runs a claimed cell of that kind to its end. Shell cells are run
# here; the agents app registers prompts in its AppConfig.ready().
RUNNERS: dict[str, Runner] = {}


def register_runner(kind: str, runner: Runner) -> None:
    """Run claimed cells of ``kind`` with ``runner`` (it returns how the cell ended; it must
    not raise for trouble of the cell's own, and must not call ``finish_cell``)."""
    RUNNERS[kind] = runner


# --- submitting and cancelling ------------------------------------------------------------------


def validate_source(kind: str, source: str) -> str:
    """Return the cleaned cell source or raise ValidationError with a readable message."""
    if kind not in Cell.Kind.values:
        raise ValidationError({"kind": f"Unknown cell kind {kind!r}."})
    limit = settings.NOTEBOOK_MAX_SOURCE_BYTES
    if len(source.encode("utf-8", errors="replace")) > limit:
        raise ValidationError(
            {"source": f"That is too long: cells are limited to {limit // 1024} KiB."}
        )
    if "\x00" in source:
        raise ValidationError({"source": "The input contains a NUL character."})
    if not source.strip():
        what = {"shell": "command", "prompt": "prompt", "note": "note",
                "restore": "checkpoint"}[kind]
        raise ValidationError({"source": f"Enter a {what} first."})
    return source.strip("\n") if kind == Cell.Kind.SHELL else source.strip()


def submit_cell(actor: Membership, session: Session, kind: str, source: str) -> Cell:
    """Add a cell at the end of the notebook and queue its work.

    Notes are done at once. Shell and prompt cells are queued and the session's scheduler
    task is sent on commit; a prompt in a site without a prompt runner (no agents app) fails
    at once saying no model is configured. Raises PermissionDenied for reviewers and
    ValidationError for empty or oversized input, and for a cell that would wait beyond
    ``AGENTIDE_MAX_QUEUED_CELLS_PER_SESSION`` queued cells in the session or
    ``AGENTIDE_MAX_QUEUED_CELLS_PER_USER`` of the author's across sessions (nothing is created).
    """
    require(actor, write=True)
    if actor.team_id != session.project.team_id:
        raise Http404("No such session.")
    if session.status == Session.Status.ENDED:
        raise ValidationError({"source": "This session has ended: nothing more runs in it."})
    source = validate_source(kind, source)
    if kind == Cell.Kind.RESTORE:
        source = _restore_source(session, source)
    quotas.check_can_run(actor, session, kind)
    with transaction.atomic():
        # Lock the session row first: positions are handed out under the same lock as seqs.
        Session.objects.filter(pk=session.pk).update(last_activity_at=timezone.now())
        last = Cell.objects.filter(session=session).order_by("-position").first()
        position = last.position + 1 if last else 1
        status = Cell.Status.QUEUED
        error = ""
        if kind == Cell.Kind.NOTE:
            status = Cell.Status.FINISHED
        elif kind not in RUNNERS:
            status, error = Cell.Status.FAILED, NO_MODEL_MESSAGE
        if status == Cell.Status.QUEUED:
            _check_queue_room(session, actor.user_id)
        cell = Cell.objects.create(
            session=session,
            position=position,
            kind=kind,
            source=source,
            author=actor.user,
            status=status,
            error=error,
        )
        append_event(
            session.pk, registry.CELL_CREATED, _cell_payload(cell), cell=cell, actor=actor.user
        )
        if status == Cell.Status.QUEUED:
            _wake_on_commit(session.pk)
    return cell


def _restore_source(session: Session, source: str) -> str:
    """A restore cell's source: the id of one of the session's checkpoints."""
    source = source.strip()
    if not (source.isascii() and source.isdigit() and len(source) <= 18
            and Checkpoint.objects.filter(pk=int(source), session=session).exists()):
        raise ValidationError({"source": "This session has no such checkpoint."})
    return str(int(source))


def _check_queue_room(session: Session, user_id: int) -> None:
    """Refuse one more queued cell beyond the queue bounds (ValidationError).

    Call under the session row's lock (so the session's count cannot race); the author's row
    is locked here for the count across their sessions.
    """
    per_session = settings.AGENTIDE_MAX_QUEUED_CELLS_PER_SESSION
    if Cell.objects.filter(session=session, status=Cell.Status.QUEUED).count() >= per_session:
        raise ValidationError(
            {
                "source": f"This session already has {per_session} cells waiting to run: "
                "wait for some to finish, or cancel some, then try again."
            }
        )
    per_user = settings.AGENTIDE_MAX_QUEUED_CELLS_PER_USER
    list(User.objects.select_for_update().filter(pk=user_id).values_list("pk"))
    if Cell.objects.filter(author_id=user_id, status=Cell.Status.QUEUED).count() >= per_user:
        raise ValidationError(
            {
                "source": f"You already have {per_user} cells waiting to run in your "
                "sessions: wait for some to finish, or cancel some, then try again."
            }
        )


def wake_scheduler(session_id: int) -> None:
    """Send the session's scheduler task now."""
    current_app.send_task(SCHEDULER_TASK, args=[int(session_id)])


def _wake_on_commit(session_id: int) -> None:
    # Looked up at commit time, so a test can record wake-ups instead of sending them.
    transaction.on_commit(lambda: wake_scheduler(session_id))


def _cell_payload(cell: Cell) -> dict[str, Any]:
    return {
        "cell_id": cell.pk,
        "position": cell.position,
        "kind": cell.kind,
        "source": cell.source,
        "status": cell.status,
        "error": cell.error,
    }


def cancel_cell(actor: Membership, session: Session, cell_id: int) -> Cell:
    """Cancel a queued cell at once, or ask the sandbox to kill a running one.

    A running cell ends ``cancelled`` when its work stops (its runner notices through the
    lease). Cancelling a cell that is already done changes nothing. PermissionDenied for
    reviewers.
    """
    require(actor, write=True)
    if actor.team_id != session.project.team_id:
        raise Http404("No such session.")
    cell = get_cell(session, cell_id)
    with transaction.atomic():
        if Cell.objects.filter(pk=cell.pk, status=Cell.Status.QUEUED).update(
            status=Cell.Status.CANCELLED, finished_at=timezone.now(), outcome="cancelled"
        ):
            cell.refresh_from_db()
            append_event(
                session.pk,
                registry.CELL_FINISHED,
                _finish_payload(cell),
                cell=cell,
                actor=actor.user,
            )
            return cell
        if Cell.objects.filter(
            pk=cell.pk, status=Cell.Status.RUNNING, cancel_requested=False
        ).update(cancel_requested=True):
            append_event(
                session.pk,
                registry.CELL_CANCEL_REQUESTED,
                {"cell_id": cell.pk, "status": Cell.Status.RUNNING},
                cell=cell,
                actor=actor.user,
            )
            transaction.on_commit(lambda: services.kill_command(session, cell))
    cell.refresh_from_db()
    return cell


def _finish_payload(cell: Cell) -> dict[str, Any]:
    return {
        "cell_id": cell.pk,
        "status": cell.status,
        "outcome": cell.outcome,
        "exit_code": cell.exit_code,
        "duration_ms": cell.duration_ms,
        "error": cell.error,
        "output_chars": cell.output_chars,
        "truncated": cell.output_truncated,
    }


# --- the scheduler ------------------------------------------------------------------------------


def run_queued_cells(session_id: int, *, worker: str = "") -> int:
    """Run the session's queued cells one after another in position order; return how many
    this call ran.

    Stops when nothing is queued or another worker runs a cell of the session (that worker
    goes on with the queue when its cell ends). Before a cell that might not end within this
    task's time limit (a prompt after other cells, or a command late in a long queue) hands
    the queue to a fresh scheduler task instead: sent at once, it claims that cell next.
    """
    worker = worker or socket.gethostname()
    count = 0
    started = time.monotonic()
    budget = settings.CELERY_TASK_SOFT_TIME_LIMIT - 30
    while True:
        close_old_connections()
        if count:
            kind = _next_queued_kind(session_id)
            if kind is None:
                return count
            if time.monotonic() - started + _longest_run_s(session_id, kind) > budget:
                wake_scheduler(session_id)
                return count
        if run_next_cell(session_id, worker=worker) is None:
            return count
        count += 1


def run_next_cell(session_id: int, *, worker: str = "") -> Cell | None:
    """Claim the session's next queued cell, run it with the runner of its kind and record
    how it ended; return the cell, or None when there was nothing to claim."""
    cell = claim_next_cell(session_id, worker=worker or socket.gethostname())
    if cell is not None:
        run_claimed_cell(cell)
    return cell


def run_claimed_cell(cell: Cell) -> None:
    """Run a claimed (``running``) cell with the runner registered for its kind and record
    how it ended (``cancelled`` when a cancel was asked and it did not finish cleanly).
    Never raises for trouble of the cell's own: the cell ends failed with the reason."""
    runner = RUNNERS.get(cell.kind)
    if runner is None:
        result = CellResult(Cell.Status.FAILED, error=NO_RUNNER_MESSAGE.format(kind=cell.kind))
    else:
        try:
            refused = ""
            if cell.kind in CHECKPOINTED_KINDS:
                refused = record_checkpoint(cell, Checkpoint.Phase.BEFORE).refused
            if refused and cell.kind == Cell.Kind.SHELL:
                # The command needs the sandbox the team may not start now (said once, in
                # the log's quota event); a prompt may still answer without it.
                result = CellResult(Cell.Status.FAILED,
                                    error=f"The sandbox could not run this command: {refused}")
            else:
                result = runner(cell)
        except Exception as exc:
            # Includes Celery's soft time limit: the cell ends failed, never stuck running.
            log.exception("running cell %s failed", cell.pk)
            message = getattr(exc, "message", exc)
            result = CellResult(Cell.Status.FAILED, error=f"Running this cell failed: {message}")
        if cell.kind in CHECKPOINTED_KINDS or cell.kind == Cell.Kind.RESTORE:
            try:
                record_checkpoint(cell, Checkpoint.Phase.AFTER)
            except Exception:
                log.exception("recording the checkpoint after cell %s failed", cell.pk)
    if result.status != Cell.Status.FINISHED and (
        Cell.objects.filter(pk=cell.pk, cancel_requested=True).exists()
    ):
        result.status, result.error = Cell.Status.CANCELLED, ""
    finish_cell(
        cell,
        status=result.status,
        outcome=result.outcome,
        exit_code=result.exit_code,
        error=result.error,
        output=result.output,
        reported_by=result.reported_by,
    )


# --- checkpoints ----------------------------------------------------------------------------------

# Cells whose work may change /workspace: a checkpoint before they run and after they end
# (a prompt's "after" is the end of its turn). A restore takes its own "before" (the undo
# point) and gets its "after" here too.
CHECKPOINTED_KINDS = (Cell.Kind.SHELL, Cell.Kind.PROMPT)


@contextlib.contextmanager
def _lease_renewed(cell: Cell) -> Iterator[None]:
    """Renew the cell's lease while the block runs (a big workspace's first checkpoint may
    take a while, and the output pump that renews it otherwise is not running)."""
    done = threading.Event()
    every = max(1.0, settings.NOTEBOOK_LEASE_S / 3)

    def renew() -> None:
        try:
            while not done.wait(every):
                cell.renew_lease(settings.NOTEBOOK_LEASE_S)
        finally:
            connection.close()

    thread = threading.Thread(target=renew, name=f"lease-{cell.pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@dataclass
class CheckpointRecord:
    """What ``record_checkpoint`` did: the checkpoint taken (or None, ``error`` saying why)
    and, when the sandbox could not be started for it, the refusal."""

    checkpoint: Checkpoint | None = None
    error: str = ""
    refused: str = ""


def record_checkpoint(
    cell: Cell, phase: str, result: CheckpointResult | None = None
) -> CheckpointRecord:
    """Take the checkpoint ``phase`` ("before" | "after") ``cell`` (or record ``result``,
    one already taken) and say so in the log (``cell.checkpoint``, with the reason when
    none was taken). Nothing is taken or said for a project with checkpoints off.

    "before" starts the sandbox if needed (the cell needs it); "after" only looks at a
    sandbox still running (one that stopped or never started has nothing new to keep).
    """
    session = Session.objects.select_related("project__team").get(pk=cell.session_id)
    if not session.project.checkpoints_enabled:
        return CheckpointRecord()
    record = CheckpointRecord()
    if result is None:
        admission = quotas.sandbox_admission(session)
        running = sandboxes.sandbox_state(session) == Sandbox.State.RUNNING
        if not running and phase == Checkpoint.Phase.AFTER:
            result = CheckpointResult(None, "The sandbox is not running after this cell: no "
                                            "checkpoint was taken.")
        elif not running:
            services.announce_sandbox_start(session)
            try:
                sandboxes.ensure_sandbox(session, admission=admission)
            except Exception as exc:
                record.refused = str(getattr(exc, "message", exc))
                result = CheckpointResult(None, "No checkpoint was taken: the sandbox could not "
                                                f"start ({record.refused}).")
        if result is None:
            with _lease_renewed(cell):
                result = checkpoints.take_checkpoint(
                    session, admission=admission, reason=f"{phase} cell #{cell.position}",
                    cell_id=cell.pk, phase=phase)
    taken = result.checkpoint
    record.checkpoint, record.error = taken, result.error
    append_event(
        cell.session_id,
        registry.CELL_CHECKPOINT,
        {
            "cell_id": cell.pk,
            "phase": phase,
            "checkpoint": taken.pk if taken else None,
            "files": taken.files if taken else 0,
            "bytes": taken.bytes if taken else 0,
            "added_bytes": taken.added_bytes if taken else 0,
            "error": result.error,
        },
        cell=cell,
    )
    return record


def run_restore(cell: Cell) -> CellResult:
    """Restore the session's /workspace to the checkpoint a restore cell names (its
    source); the registered runner of restore cells. The checkpoint taken of the files
    just before is the cell's "before" checkpoint: restoring it undoes this one."""
    session = Session.objects.select_related("project__team").get(pk=cell.session_id)
    target = Checkpoint.objects.filter(pk=int(cell.source), session=session).first()
    if target is None:
        return CellResult(Cell.Status.FAILED, error="That checkpoint no longer exists.")
    services.announce_sandbox_start(session)
    error = ""
    try:
        checkpoints.restore_checkpoint(session, target, admission=quotas.sandbox_admission(session),
                                       cell_id=cell.pk)
    except CheckpointError as exc:
        error = exc.message
    undo = checkpoints.checkpoint_for_cell(cell.pk, Checkpoint.Phase.BEFORE)
    if undo is not None or error:
        said = CheckpointResult(undo, "" if undo else error)
        record_checkpoint(cell, Checkpoint.Phase.BEFORE, said)
    if error:
        return CellResult(Cell.Status.FAILED, error=error)
    return CellResult(Cell.Status.FINISHED)


def _next_queued_kind(session_id: int) -> str | None:
    return (
        Cell.objects.filter(session_id=session_id, status=Cell.Status.QUEUED)
        .order_by("position")
        .values_list("kind", flat=True)
        .first()
    )


def _longest_run_s(session_id: int, kind: str) -> int:
    """How long a cell of ``kind`` may run: a shell cell up to the project's command timeout;
    any other kind (a model turn of many steps) up to the task's whole time limit, so it only
    ever starts as the first cell of a scheduler task."""
    if kind != Cell.Kind.SHELL:
        return int(settings.CELERY_TASK_SOFT_TIME_LIMIT)
    timeout = (
        Session.objects.filter(pk=session_id)
        .values_list("project__command_timeout_s", flat=True)
        .first()
    )
    return min(timeout or 0, settings.NOTEBOOK_MAX_COMMAND_S)


def claim_next_cell(session_id: int, *, worker: str = "") -> Cell | None:
    """Claim the session's oldest queued cell, of any kind, if no cell of the session runs.

    Returns the claimed cell (now ``running``, leased to ``worker``), or None when there is
    nothing to do or another worker runs a cell of this session. Safe under any number of
    concurrent callers: the claim happens under the session row's lock and is a conditional
    update of the cell's status.
    """
    with transaction.atomic():
        now = timezone.now()
        if not Session.objects.filter(pk=session_id).update(last_activity_at=now):
            return None
        if Cell.objects.filter(session_id=session_id, status=Cell.Status.RUNNING).exists():
            return None
        cell = (
            Cell.objects.filter(session_id=session_id, status=Cell.Status.QUEUED)
            .order_by("position")
            .first()
        )
        if cell is None or not start_cell(cell, worker=worker, now=now):
            return None
    return cell


def start_cell(cell: Cell, *, worker: str, now: dt.datetime) -> bool:
    """Move a queued ``cell`` to ``running``, leased to ``worker``, and record it as an event.

    A conditional update: returns False (and changes nothing) when the cell is no longer
    queued. Call it inside the transaction that holds the session row's lock.
    """
    fields = {
        "status": Cell.Status.RUNNING,
        "started_at": now,
        "lease_expires_at": now + dt.timedelta(seconds=settings.NOTEBOOK_LEASE_S),
        "worker": worker[:200],
    }
    if not Cell.objects.filter(pk=cell.pk, status=Cell.Status.QUEUED).update(**fields):
        return False
    for name, value in fields.items():  # what the update wrote; no second read of the row
        setattr(cell, name, value)
    append_event(
        cell.session_id,
        registry.CELL_STARTED,
        {"cell_id": cell.pk, "status": Cell.Status.RUNNING},
        cell=cell,
    )
    return True


def finish_cell(
    cell: Cell,
    *,
    status: str,
    outcome: str = "",
    exit_code: int | None = None,
    error: str = "",
    output: CappedOutput | None = None,
    reported_by: dict[str, Any] | None = None,
) -> bool:
    """Record how a running cell ended and append ``cell.finished``.

    ``reported_by`` (who said how the command ended: the sandbox runner's command id and
    source, and its processes still running) goes into the event's payload as is, for audit.

    Returns False (changing nothing) when the cell is no longer ``running`` — e.g. the
    lease expired and it was already marked interrupted.
    """
    now = timezone.now()
    started = cell.started_at or now
    fields: dict[str, Any] = {
        "status": status,
        "outcome": outcome,
        "exit_code": exit_code,
        "error": error,
        "finished_at": now,
        "duration_ms": max(0, int((now - started).total_seconds() * 1000)),
        "lease_expires_at": None,
    }
    if output is not None:
        fields.update(
            output=output.text(),
            output_chars=output.total_chars,
            output_truncated=output.truncated,
        )
    with transaction.atomic():
        if not Cell.objects.filter(pk=cell.pk, status=Cell.Status.RUNNING).update(**fields):
            return False
        cell.refresh_from_db()
        payload = _finish_payload(cell)
        if reported_by:
            payload["reported_by"] = reported_by
        append_event(cell.session_id, registry.CELL_FINISHED, payload, cell=cell)
    return True


def expire_stale_cells(*, now: dt.datetime | None = None) -> list[int]:
    """Mark running cells whose lease expired as ``interrupted``; return their ids.

    Also asks the sandbox to kill whatever the command left running and wakes the scheduler
    of each affected session, so its next cell runs.
    """
    now = now or timezone.now()
    expired = []
    stale = Cell.objects.filter(status=Cell.Status.RUNNING, lease_expires_at__lt=now)
    for cell in stale.select_related("session"):
        with transaction.atomic():
            done = Cell.objects.filter(
                pk=cell.pk, status=Cell.Status.RUNNING, lease_expires_at__lt=now
            ).update(
                status=Cell.Status.INTERRUPTED,
                error=INTERRUPTED_MESSAGE,
                finished_at=now,
                duration_ms=max(0, int((now - (cell.started_at or now)).total_seconds() * 1000)),
                lease_expires_at=None,
                output=_output_from_events(cell.pk),
            )
            if not done:
                continue
            cell.refresh_from_db()
            cell.output_chars = len(cell.output)
            Cell.objects.filter(pk=cell.pk).update(output_chars=cell.output_chars)
            append_event(
                cell.session_id, registry.CELL_FINISHED, _finish_payload(cell), cell=cell
            )
            _wake_on_commit(cell.session_id)
        services.kill_command(cell.session, cell)
        expired.append(cell.pk)
    return expired


# A queued cell older than this, in a session with no running cell, has lost its wake-up
# (a broker that dropped the message, a task name from an older release): the beat wakes
# its scheduler again. Long enough that a wake-up in flight is never doubled in practice,
# and a doubled one is harmless (only one scheduler claims a cell).
IDLE_QUEUE_GRACE = dt.timedelta(seconds=30)


def wake_idle_queues(*, now: dt.datetime | None = None) -> list[int]:
    """Wake the scheduler of every session whose next cell has waited past
    ``IDLE_QUEUE_GRACE`` with nothing running; return those session ids."""
    now = now or timezone.now()
    running = Cell.objects.filter(status=Cell.Status.RUNNING).values("session_id")
    idle = (
        Cell.objects.filter(status=Cell.Status.QUEUED, created_at__lt=now - IDLE_QUEUE_GRACE)
        .exclude(session_id__in=running)
        .values_list("session_id", flat=True)
        .distinct()
    )
    woken = sorted(set(idle))
    for session_id in woken:
        log.warning("session %s had queued cells and nothing running: waking it", session_id)
        wake_scheduler(session_id)
    return woken


def _output_from_events(cell_id: int) -> str:
    texts = Event.objects.filter(cell_id=cell_id, type=registry.CELL_OUTPUT).order_by("seq")
    return "".join(p.get("text", "") for p in texts.values_list("payload", flat=True))


def cell_output_text(cell: Cell) -> str:
    """The stored output of a cell: the capped copy once done, the events while running."""
    return cell.output if cell.is_done else _output_from_events(cell.pk)


# --- the lease and the output pump --------------------------------------------------------------


class CellLease:
    """The lease of one running cell: ``check`` renews it (every third of its length) and
    notices cancel requests. Called periodically from one thread (the cell's OutputPump).

    ``cancelled`` is set once the cell is marked for cancel or is no longer ``running``
    (expired and taken over); from then on ``on_cancel`` (kill the cell's work) is called at
    every check while ``busy()`` says work is under way, until it returns True, so work that
    was still starting when the cancel came is killed too.
    """

    def __init__(
        self,
        cell: Cell,
        *,
        on_cancel: Callable[[], bool],
        busy: Callable[[], bool] = lambda: True,
    ) -> None:
        self.cell = cell
        self.cancelled = threading.Event()
        self._on_cancel = on_cancel
        self._busy = busy
        self._killed = False
        self._renew_every = max(1.0, settings.NOTEBOOK_LEASE_S / 3)
        self._next_renew = time.monotonic() + self._renew_every

    def check(self) -> None:
        row = Cell.objects.filter(pk=self.cell.pk).values("status", "cancel_requested").first()
        gone = row is None or row["status"] != Cell.Status.RUNNING
        if gone or (row and row["cancel_requested"]):
            self.cancelled.set()
        if self.cancelled.is_set() and not self._killed and self._busy():
            self._killed = bool(self._on_cancel())
        if not gone and time.monotonic() >= self._next_renew:
            self.cell.renew_lease(settings.NOTEBOOK_LEASE_S)
            self._next_renew = time.monotonic() + self._renew_every


class OutputPump:
    """Coalesces output text into larger pieces for ``emit``.

    ``feed`` buffers text; a piece is emitted from the feeding thread when ``max_chars`` have
    collected or when ``interval_s`` has already passed since the previous piece (the first
    output of a command, or the first after a pause, goes out at once), and otherwise from
    the pump's own thread once the interval has passed: a steady stream at most once per
    interval. ``emit`` calls never overlap and
    keep feed order. ``flush`` emits what is buffered now; ``close`` emits what is left and
    stops the thread.

    ``tick``, when given, is called from the pump's thread every ``tick_s`` seconds (a cell's
    ``CellLease.check``), so one thread serves both; its errors are logged.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        interval_s: float,
        max_chars: int,
        tick: Callable[[], None] | None = None,
        tick_s: float = 1.0,
    ) -> None:
        self._emit = emit
        self._interval = interval_s
        self._max = max_chars
        self._tick = tick
        self._tick_s = tick_s
        self._next_tick = time.monotonic() + tick_s
        self._buffer: list[str] = []
        self._size = 0
        self._deadline = 0.0
        self._last_emit = -interval_s  # so the very first piece is not held back
        self._closed = False
        self._cond = threading.Condition()
        self._emit_lock = threading.Lock()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="output-pump", daemon=True)
        self._thread.start()

    def feed(self, text: str) -> None:
        if not text:
            return
        with self._cond:
            now = time.monotonic()
            due = False
            if not self._buffer:
                self._deadline = max(now, self._last_emit + self._interval)
                # Not while a piece is being emitted: this text joins the next piece instead.
                due = self._deadline <= now and not self._emit_lock.locked()
            self._buffer.append(text)
            self._size += len(text)
            due = due or self._size >= self._max
            if not due:
                self._cond.notify()
        if due:
            # The first piece after a pause (or a full buffer) goes out from this thread at
            # once: no hop to the pump's thread, and the feeder's warm database connection.
            self.flush()

    def _take(self) -> str:
        # Caller holds the condition.
        text = "".join(self._buffer)
        self._buffer, self._size = [], 0
        return text

    def flush(self) -> None:
        """Emit what is buffered now; returns once every earlier piece has been emitted."""
        with self._emit_lock:
            with self._cond:
                text = self._take()
                if text:
                    self._last_emit = time.monotonic()
            # One read from the sandbox can exceed max_chars: emit it in pieces.
            for start in range(0, len(text), self._max):
                self._call(text[start : start + self._max])
            if text:
                with self._cond:
                    # The interval counts from the end of a slow emit too, so output that
                    # comes meanwhile is coalesced (one piece, not one emit per line).
                    self._last_emit = time.monotonic()

    def _call(self, text: str) -> None:
        try:
            self._emit(text)
        except BaseException as exc:  # recorded; the command keeps running
            log.exception("emitting output failed")
            self.error = exc

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._closed:
                        return
                    now = time.monotonic()
                    wake = self._next_tick if self._tick is not None else None
                    if self._buffer:
                        wake = self._deadline if wake is None else min(wake, self._deadline)
                    if wake is None or wake > now:
                        self._cond.wait(None if wake is None else wake - now)
                        continue
                    flush_due = bool(self._buffer) and self._deadline <= now
                if flush_due:
                    self.flush()
                if self._tick is not None and time.monotonic() >= self._next_tick:
                    self._next_tick = time.monotonic() + self._tick_s
                    try:
                        self._tick()
                    except Exception:
                        log.exception("the output pump's tick failed")
        finally:
            connection.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        self.flush()


# --- running a shell cell -----------------------------------------------------------------------


@dataclass
class _LiveOutput:
    """Turns coalesced text into output events: up to the head budget live, then the tail
    once at the end; everything lands first in the capped copy stored on the cell."""

    cell: Cell
    capture: CappedOutput
    tracker: StyleTracker = field(default_factory=StyleTracker)
    live_chars: int = 0

    def emit(self, text: str) -> None:
        # Stored first: whatever happens to styling or publishing, the output is kept.
        self.capture.append(text)
        try:
            sgr, text = self.tracker.split(text)
        except Exception:
            log.exception("styling output of cell %s failed; sending it unstyled", self.cell.pk)
            self.tracker = StyleTracker()
            sgr = ""
        self._write(sgr, text)

    def finish(self) -> None:
        sgr, text = self.tracker.flush()
        self._write(sgr, text)
        if self.capture.truncated:
            note = f"\n[... {self.capture.omitted_chars} characters omitted ...]\n"
            append_event(
                self.cell.session_id,
                registry.CELL_OUTPUT,
                {"text": note + self.capture.tail, "sgr": "", "tail": True},
                cell=self.cell,
            )

    def _write(self, sgr: str, text: str) -> None:
        """Publish ``text`` (already in the capture) while the live budget lasts."""
        if not text:
            return
        room = self.capture.head_chars - self.live_chars
        if room <= 0:
            return
        piece = text[:room]
        self.live_chars += len(piece)
        append_event(
            self.cell.session_id,
            registry.CELL_OUTPUT,
            {"text": piece, "sgr": sgr},
            cell=self.cell,
        )


def run_cell(cell: Cell) -> CellResult:
    """Run a claimed (``running``) shell cell in the session's sandbox to its end; the
    registered shell runner.

    Streams output as ``cell.output`` events and returns the result: ``finished`` for exit
    code 0, ``failed`` for other exit codes, timeouts, OOM kills and sandbox errors,
    ``cancelled`` when cancelled. Waits for the sandbox to start if needed.
    """
    session = Session.objects.select_related("project__team").get(pk=cell.session_id)
    capture = CappedOutput(
        head_chars=settings.NOTEBOOK_OUTPUT_HEAD_CHARS,
        tail_chars=settings.NOTEBOOK_OUTPUT_TAIL_CHARS,
    )
    live = _LiveOutput(cell=cell, capture=capture)
    lease = CellLease(cell, on_cancel=lambda: services.kill_command(session, cell))
    pump = OutputPump(
        live.emit,
        interval_s=settings.NOTEBOOK_OUTPUT_FLUSH_MS / 1000,
        max_chars=settings.NOTEBOOK_OUTPUT_FLUSH_CHARS,
        tick=lease.check,
        tick_s=settings.NOTEBOOK_CANCEL_POLL_S,
    )
    decoders: dict[str, StreamDecoder] = {}

    def on_output(*args: Any) -> None:
        # The sandbox service passes decoded text; accept (stream, bytes) too.
        data = args[-1]
        if isinstance(data, bytes | bytearray):
            stream = str(args[0]) if len(args) > 1 else "stdout"
            data = decoders.setdefault(stream, StreamDecoder()).feed(bytes(data))
        pump.feed(data)

    services.announce_sandbox_start(session)
    timeout_s = min(session.project.command_timeout_s, settings.NOTEBOOK_MAX_COMMAND_S)
    result = CellResult(Cell.Status.FAILED, output=capture)
    try:
        ran = sandboxes.run_command(
            session,
            cell.source,
            command_id=cell.command_id,
            admission=quotas.sandbox_admission(session),
            timeout_s=timeout_s,
            on_output=on_output,
        )
        result.outcome, result.exit_code = ran.outcome, ran.exit_code
        result.reported_by = {"source": ran.source, "command_id": ran.command_id,
                              "leftover_processes": ran.leftover_processes}
        if ran.outcome == "exit":
            result.status = Cell.Status.FINISHED if ran.exit_code == 0 else Cell.Status.FAILED
        elif ran.outcome == "cancelled":
            result.status = Cell.Status.CANCELLED
        elif ran.outcome == "timeout":
            result.error = f"The command timed out after {timeout_s} seconds and was killed."
        elif ran.outcome == "oom":
            result.error = "The command ran out of memory and was killed."
    except Exception as exc:
        # Includes Celery's soft time limit: make sure nothing keeps running in the sandbox.
        log.exception("running cell %s failed", cell.pk)
        result.error = f"The sandbox could not run this command: {getattr(exc, 'message', exc)}"
        services.kill_command(session, cell)
    finally:
        for decoder in decoders.values():
            pump.feed(decoder.finish())
        pump.close()
        live.finish()
    return result


register_runner(Cell.Kind.SHELL, run_cell)
register_runner(Cell.Kind.RESTORE, run_restore)
