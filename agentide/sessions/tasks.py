"""Celery tasks of the notebook: thin wrappers that load ids and call services."""

from __future__ import annotations

import socket

from celery import shared_task

from agentide.sessions import execution, terminals


@shared_task(name=execution.SCHEDULER_TASK)
def run_session_cells(session_id: int) -> int:
    """The session's scheduler: run its queued cells in order, each with the runner of its
    kind; returns how many this task ran (see ``execution.run_queued_cells``).

    Sent on commit whenever a cell is queued (or a stale one expires). Several of these may
    be delivered for one session at once, and redelivered after a worker dies: only one
    claims a cell at a time, the others find a cell running or nothing queued and return 0.
    """
    worker = f"{socket.gethostname()}:{run_session_cells.request.id}"
    return execution.run_queued_cells(session_id, worker=worker)


@shared_task(name="agentide.sessions.tasks.expire_stale_cells")
def expire_stale_cells() -> int:
    """Beat task: mark running cells whose worker stopped renewing the lease interrupted,
    and wake sessions whose queued cells lost their wake-up."""
    expired = execution.expire_stale_cells()
    execution.wake_idle_queues()
    return len(expired)


@shared_task(name=terminals.TASK, acks_late=False)
def run_terminal(session_id: int) -> str:
    """Pump the session's terminal until it closes (on the terminal queue: it may run for
    hours). A duplicate finds the lease taken and returns at once."""
    worker = f"{socket.gethostname()}:{run_terminal.request.id}"
    return terminals.run_terminal(session_id, worker=worker)
