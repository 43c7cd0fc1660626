"""``manage.py import_transcript FILE --team SLUG --project SLUG --user NAME``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.http import Http404

from agentide.accounts.models import User
from agentide.projects.services import get_project_for_user
from agentide.transcripts import exchange
from agentide.transcripts.format import TranscriptInvalid


class Command(BaseCommand):
    help = "Import a JSONL transcript as a new read-only session, as a member of the team."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file")
        parser.add_argument("--team", required=True, help="Team slug.")
        parser.add_argument("--project", required=True, help="Project slug.")
        parser.add_argument("--user", required=True, help="Username of the importing member.")
        parser.add_argument("--title", default="", help="Title (default: the transcript's).")

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user {options['user']!r}.")
        try:
            project, membership = get_project_for_user(
                user, options["team"], options["project"], write=True
            )
            data = Path(options["file"]).read_bytes()
            session = exchange.import_jsonl(membership, project, data, title=options["title"])
        except (Http404, PermissionDenied) as exc:
            raise CommandError(f"Not allowed: {exc}") from exc
        except TranscriptInvalid as exc:
            raise CommandError("Not imported:\n" + "\n".join(exc.errors)) from exc
        except OSError as exc:
            raise CommandError(f"Cannot read {options['file']}: {exc}") from exc
        self.stdout.write(f"Imported {session.last_seq} events as session {session.pk}.")
