"""Receivers of what other apps report.

Account changes that end live access: sockets re-check at once instead of at their next
heartbeat (or never, for a tab that stopped sending one). Removing a membership, changing
its role, deactivating or deleting a user, or changing a password asks the user's open
sockets to re-check their access after commit. A deleted session's terminal leaves nothing
in Redis.

Sandbox state changes and quota refusals: appended to the session's log (``sandbox.state``,
``quota.exceeded``).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from agentide.accounts.models import Membership, User
from agentide.events import log as event_log
from agentide.events import registry
from agentide.quotas.services import QUOTA_EVENT
from agentide.quotas.signals import quota_refused
from agentide.sandboxes.models import Sandbox
from agentide.sandboxes.signals import sandbox_state_changed
from agentide.sessions import services, terminals
from agentide.sessions.models import Session

log = logging.getLogger(__name__)


@receiver(post_save, sender=Membership, dispatch_uid="notebook-membership-saved")
def membership_saved(sender: Any, instance: Membership, created: bool, **kwargs: Any) -> None:
    if not created:  # a new membership takes nothing away
        services.recheck_user_sockets(instance.user_id)


@receiver(post_delete, sender=Membership, dispatch_uid="notebook-membership-deleted")
def membership_deleted(sender: Any, instance: Membership, **kwargs: Any) -> None:
    services.recheck_user_sockets(instance.user_id)


@receiver(post_save, sender=User, dispatch_uid="notebook-user-saved")
def user_saved(
    sender: Any, instance: User, created: bool, update_fields: Any = None, **kwargs: Any
) -> None:
    # Signing in saves last_login only: nothing to re-check.
    if not created and set(update_fields or ()) != {"last_login"}:
        services.recheck_user_sockets(instance.pk)


@receiver(post_delete, sender=User, dispatch_uid="notebook-user-deleted")
def user_deleted(sender: Any, instance: User, **kwargs: Any) -> None:
    services.recheck_user_sockets(instance.pk)


@receiver(post_delete, sender=Session, dispatch_uid="notebook-session-deleted")
def session_deleted(sender: Any, instance: Session, **kwargs: Any) -> None:
    transaction.on_commit(partial(terminals.forget_terminal, instance.pk))


@receiver(sandbox_state_changed, dispatch_uid="notebook-sandbox-state")
def record_sandbox_state(
    sender: Any, sandbox: Sandbox, new_state: str, detail: dict[str, Any], **kwargs: Any
) -> None:
    """Append ``sandbox.state`` to the owning session's log (pool members have none)."""
    if not sandbox.session_id:
        return
    payload = {"state": new_state, "container": sandbox.container_id[:12], **detail}
    try:
        event_log.append_event(sandbox.session_id, registry.SANDBOX_STATE, payload)
    except Exception:
        # The session may be being deleted; the state change itself is on the row.
        log.info("could not record sandbox state for session %s", sandbox.session_id,
                 exc_info=True)


@receiver(quota_refused, dispatch_uid="notebook-quota-refused")
def record_quota_refusal(
    sender: Any, session_id: int, actor: User | None, limit: str, message: str, **kwargs: Any
) -> None:
    event_log.append_event(session_id, QUOTA_EVENT, {"limit": limit, "message": message},
                          actor=actor)

