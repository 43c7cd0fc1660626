"""Celery tasks of transcripts: thin wrappers that load ids and call services."""

from __future__ import annotations

from celery import shared_task

from agentide.transcripts import services


@shared_task(name="agentide.transcripts.tasks.replay_fork")
def replay_fork(fork_session_id: int) -> str:
    """Copy the workspace into a new fork and re-submit its prompts (see
    ``services.replay_fork``); "skipped" when another delivery already did."""
    return services.replay_fork(fork_session_id)
