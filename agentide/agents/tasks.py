"""Celery tasks of the agent: thin wrappers that load ids and call services."""

from __future__ import annotations

import socket

from celery import shared_task

from agentide.agents import services

# A prompt queued behind other cells is tried again every second for up to this many times.
WAIT_RETRIES = 24 * 3600


@shared_task(bind=True, name="agentide.agents.tasks.run_prompt_cell", max_retries=WAIT_RETRIES)
def run_prompt_cell(self, cell_id: int) -> str:
    """Run the agent turn of prompt cell ``cell_id`` (see ``services.run_prompt_cell``).

    While earlier cells of the session run or wait, the task retries itself a second later;
    a redelivered task whose cell was already claimed returns "skipped".
    """
    worker = f"{socket.gethostname()}:{self.request.id}"
    outcome = services.run_prompt_cell(cell_id, worker=worker)
    if outcome == "waiting":
        raise self.retry(countdown=1)
    return outcome
