"""Settings of the benchmark stack: the product's settings, with a sandbox site of its own.

Every process of the bench (Daphne, the Celery worker and beat, the bench itself) runs with
``DJANGO_SETTINGS_MODULE=bench.settings`` so that the sandboxes it creates carry the
``agentide-bench`` site label and a leftover of an interrupted run can be found and removed
by the next one, without touching anyone else's containers on a shared engine.
"""

from __future__ import annotations

from agentide.settings import *  # noqa: F403

AGENTIDE_SANDBOX_SITE = "agentide-bench"
# The bench fills the warm pool itself when it measures it; nothing refills it behind its back.
AGENTIDE_SANDBOX_WARM_POOL_SIZE = 0
# The agent bench's fake model server listens on loopback, which sites refuse by default.
AGENTIDE_MODEL_PRIVATE_NETWORKS = ["127.0.0.0/8"]
