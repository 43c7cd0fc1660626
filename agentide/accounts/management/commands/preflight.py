"""Check that the database and Redis answer before the processes start."""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection


class Command(BaseCommand):
    help = "Fail with a message naming the variable when DATABASE_URL or REDIS_URL is unusable."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            connection.ensure_connection()
        except Exception as exc:
            raise CommandError(f"DATABASE_URL: cannot connect to the database: {exc}") from exc
        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
        except Exception as exc:
            raise CommandError(
                f"REDIS_URL={settings.REDIS_URL}: Redis is unreachable: {exc}"
            ) from exc
        self.stdout.write("Database and Redis answer.")
