"""``manage.py export_transcript SESSION_ID [-o FILE]``: a session as JSONL."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentide.sessions.models import Session
from agentide.transcripts import exchange


class Command(BaseCommand):
    help = "Write a session's transcript in the JSONL format of docs/transcript-format.md."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("session_id", type=int)
        parser.add_argument("-o", "--output", help="File to write (default: standard output).")

    def handle(self, *args: Any, **options: Any) -> None:
        session = (
            Session.objects.select_related("project__team", "created_by")
            .filter(pk=options["session_id"])
            .first()
        )
        if session is None:
            raise CommandError(f"No session {options['session_id']}.")
        lines = exchange.export_jsonl(session)
        if options["output"]:
            with open(options["output"], "w", encoding="utf-8") as handle:
                handle.writelines(lines)
        else:
            sys.stdout.writelines(lines)
