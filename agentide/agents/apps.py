from __future__ import annotations

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agentide.agents"
    label = "agents"
    verbose_name = "Agents"

    def ready(self) -> None:
        # The session layer (sessions/execution.py, sessions/notebook.py) knows nothing of
        # agents: this app tells it how to run prompt cells and how to show agent events.
        from agentide.agents.display import render_agent_event
        from agentide.agents.services import run_turn
        from agentide.events import registry
        from agentide.sessions.execution import register_runner
        from agentide.sessions.models import Cell
        from agentide.sessions.notebook import register_renderer

        register_runner(Cell.Kind.PROMPT, run_turn)
        register_renderer(
            registry.AGENT_TYPES, lambda message, *, session_id: render_agent_event(message)
        )
