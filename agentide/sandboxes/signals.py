"""What sandboxes tell the apps above them. Receivers connect in their own app's
``AppConfig.ready()``; sandboxes never import them.

- ``sandbox_state_changing``: sent before a sandbox row leaves its state (the row still
  holds the old state and times), with ``sandbox``, ``old_state`` and ``new_state``.
  The quota ledger charges the running time so far here.
- ``sandbox_state_changed``: sent after the row changed, with ``sandbox``, ``old_state``,
  ``new_state`` and ``detail`` (a dict: ``error`` for a failure, ``pool`` for a claimed
  pool member). The session's log records it as a ``sandbox.state`` event.

Receivers must not raise: the state change has happened (or is about to) on the engine
whatever they do; a failed receiver logs and lets the next change or beat catch up.
"""

from __future__ import annotations

from django.dispatch import Signal

sandbox_state_changing = Signal()
sandbox_state_changed = Signal()
