"""Periodic quota jobs for Celery beat; each calls one service."""

from __future__ import annotations

from celery import shared_task

from agentide.quotas import services


@shared_task(ignore_result=True)
def charge_running_sandboxes() -> int:
    """Charge the running time of every running sandbox up to now (seconds charged)."""
    return services.charge_running_sandboxes()
