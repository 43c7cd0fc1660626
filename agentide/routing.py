"""Websocket routes of every app, gathered for agentide.asgi."""

from __future__ import annotations

from typing import Any

websocket_urlpatterns: list[Any] = []
