"""Websocket routes of every app, gathered for agentide.asgi."""

from __future__ import annotations

from typing import Any

from agentide.sessions.routing import websocket_urlpatterns as session_routes

websocket_urlpatterns: list[Any] = [*session_routes]
