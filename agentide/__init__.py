"""AgentIDE: a self-hosted, collaborative, notebook-style IDE for AI agents."""

from agentide.celery import app as celery_app

__all__ = ["celery_app"]
