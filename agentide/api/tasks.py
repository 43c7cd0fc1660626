"""Periodic jobs of the API for Celery beat; each calls one service."""

from __future__ import annotations

from celery import shared_task

from agentide.api import containers


@shared_task(ignore_result=True)
def expire_idle_containers() -> int:
    """Expire the API containers idle past their ``expires_after`` (how many expired)."""
    return containers.expire_idle_containers()
