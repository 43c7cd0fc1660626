"""Create the first administrator, once, with a generated password printed one time."""

from __future__ import annotations

import secrets
from typing import Any

from django.core.management.base import BaseCommand

from agentide.accounts.models import User


class Command(BaseCommand):
    help = "Create an 'admin' superuser with a random password if no superuser exists yet."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write("An administrator exists already; no new password was made.")
            return
        password = secrets.token_urlsafe(15)
        User.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created the administrator '{username}' with the password: {password}\n"
                "It is shown only this once: log in and change it (Account > Change password)."
            )
        )
