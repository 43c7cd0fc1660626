"""Periodic sandbox jobs for Celery beat; each calls one service.

Add to ``CELERY_BEAT_SCHEDULE`` (see the sandboxes section of the settings):
``agentide.sandboxes.tasks.reconcile_sandboxes`` (every 60 s),
``agentide.sandboxes.tasks.stop_idle_sandboxes`` (every 60 s),
``agentide.sandboxes.tasks.refill_warm_pool`` (every 30 s),
``agentide.sandboxes.tasks.prune_checkpoints`` (hourly).
"""

from __future__ import annotations

from celery import shared_task

from agentide.sandboxes import checkpoints, services


@shared_task(ignore_result=True)
def reconcile_sandboxes() -> dict[str, int]:
    report = services.reconcile()
    return {
        "removed_containers": len(report.removed_containers),
        "removed_volumes": len(report.removed_volumes),
        "marked_missing": len(report.marked_missing),
    }


@shared_task(ignore_result=True)
def stop_idle_sandboxes() -> int:
    return services.stop_idle_sandboxes()


@shared_task(ignore_result=True)
def refill_warm_pool() -> int:
    return services.refill_warm_pool()


@shared_task(ignore_result=True)
def prune_checkpoints() -> int:
    return checkpoints.prune_all_checkpoints()
