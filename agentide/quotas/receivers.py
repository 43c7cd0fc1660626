"""Receivers of the lower layers' signals, connected in ``QuotasConfig.ready()``."""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import receiver

from agentide.quotas import services
from agentide.sandboxes.models import Sandbox
from agentide.sandboxes.signals import sandbox_state_changing

log = logging.getLogger(__name__)


@receiver(sandbox_state_changing, dispatch_uid="quotas-charge-sandbox-time")
def charge_sandbox_time(sender: Any, sandbox: Sandbox, new_state: str, **kwargs: Any) -> None:
    """Before a sandbox row changes state: charge its running time so far, and free its
    slot when it stops. Never raises: a failed charge is logged, and the meter lets the
    next charge pick the time up."""
    try:
        services.charge_sandbox_time(sandbox, new_state)
    except Exception:
        log.exception("charging sandbox %s on its way to %s failed", sandbox.pk, new_state)
