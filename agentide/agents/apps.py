from __future__ import annotations

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agentide.agents"
    label = "agents"
    verbose_name = "Agents"

    def ready(self) -> None:
        # Prompt cells run through the session's scheduler (sessions/execution.py), which
        # knows nothing of agents: this app tells it how to run them.
        from agentide.agents.services import run_turn
        from agentide.sessions.execution import register_runner
        from agentide.sessions.models import Cell

        register_runner(Cell.Kind.PROMPT, run_turn)
