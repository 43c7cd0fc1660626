"""The Celery application: configured from Django settings (the CELERY_ prefix)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentide.settings")

app = Celery("agentide")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _recycle_connections(**kwargs: Any) -> None:
    """Treat a task like a request: drop database connections that are broken or older than
    CONN_MAX_AGE, keep the others (``CELERY_DB_REUSE_MAX`` stops Celery closing them all)."""
    task = kwargs.get("task")
    if task is not None and getattr(task.request, "is_eager", False):
        return  # runs inside its caller (a test's transaction): its connection is the caller's
    close_old_connections()
