"""Celery tasks of the notebook: thin wrappers that load ids and call services."""

from __future__ import annotations

import socket

from celery import shared_task

from agentide.sessions import services, terminals


@shared_task(name="agentide.sessions.tasks.run_shell_cells")
def run_shell_cells(session_id: int) -> int:
    """Run the session's queued shell cells in order; returns how many this task ran.

    Enqueued on commit whenever a shell cell is submitted (or a stale one expires). Several
    of these may be delivered for one session at once, and redelivered after a worker dies:
    only one claims a cell at a time, the others find nothing to claim and return 0.
    """
    worker = f"{socket.gethostname()}:{run_shell_cells.request.id}"
    return services.run_queued_cells(session_id, worker=worker)


@shared_task(name="agentide.sessions.tasks.expire_stale_cells")
def expire_stale_cells() -> int:
    """Beat task: mark running cells whose worker stopped renewing the lease interrupted."""
    return len(services.expire_stale_cells())


@shared_task(name=terminals.TASK, acks_late=False)
def run_terminal(session_id: int) -> str:
    """Pump the session's terminal until it closes (on the terminal queue: it may run for
    hours). A duplicate finds the lease taken and returns at once."""
    worker = f"{socket.gethostname()}:{run_terminal.request.id}"
    return terminals.run_terminal(session_id, worker=worker)
