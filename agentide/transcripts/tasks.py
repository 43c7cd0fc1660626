"""Celery tasks of transcripts: thin wrappers that load ids and call services."""

from __future__ import annotations

from celery import shared_task

from agentide.transcripts import forks, search


@shared_task(name="agentide.transcripts.tasks.replay_fork")
def replay_fork(fork_session_id: int) -> str:
    """Copy the workspace into a new fork and re-submit its prompts (see
    ``forks.replay_fork``); "skipped" when another delivery already did."""
    return forks.replay_fork(fork_session_id)


@shared_task(name="agentide.transcripts.tasks.refresh_search_index")
def refresh_search_index() -> int:
    """Index the events appended since the last run, in every session (Celery beat)."""
    return search.refresh_search_index()
