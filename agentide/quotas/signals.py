"""What quotas tell the session's log; receivers connect in the sessions app's
``AppConfig.ready()`` (quotas never import sessions' services).

- ``quota_refused``: a quota refused work in a session, with ``session_id``, ``actor`` (a
  User or None), ``limit`` and ``message``; sent before ``QuotaExceeded`` is raised, in the
  caller's transaction. The log records it as ``quota.exceeded``. Receivers may raise (a
  log that cannot be written fails the refusal with it, as a direct call would).
"""

from __future__ import annotations

from django.dispatch import Signal

quota_refused = Signal()
