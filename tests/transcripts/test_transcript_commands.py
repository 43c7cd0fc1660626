"""The export_transcript and import_transcript management commands."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from agentide.sessions.models import Session

pytestmark = pytest.mark.django_db


def test_export_then_import_from_the_command_line(
    personas: Any, project: Any, rich_session: Any, tmp_path: Path
) -> None:
    target = tmp_path / "t.jsonl"
    call_command("export_transcript", str(rich_session.pk), "-o", str(target))
    out = io.StringIO()
    call_command(
        "import_transcript",
        str(target),
        "--team",
        "acme",
        "--project",
        "demo",
        "--user",
        "member",
        "--title",
        "CLI copy",
        stdout=out,
    )
    imported = Session.objects.get(title="CLI copy", imported=True)
    assert f"Imported {rich_session.last_seq} events as session {imported.pk}." in out.getvalue()

    with pytest.raises(CommandError, match="Not allowed"):
        call_command(
            "import_transcript",
            str(target),
            "--team",
            "acme",
            "--project",
            "demo",
            "--user",
            "reviewer",
        )
    with pytest.raises(CommandError, match="Not allowed"):
        call_command(
            "import_transcript",
            str(target),
            "--team",
            "acme",
            "--project",
            "demo",
            "--user",
            "outsider",
        )
    target.write_text('{"format": "nope"}\n')
    with pytest.raises(CommandError, match="line 1"):
        call_command(
            "import_transcript",
            str(target),
            "--team",
            "acme",
            "--project",
            "demo",
            "--user",
            "member",
        )
    with pytest.raises(CommandError, match="No session"):
        call_command("export_transcript", "999999")


def test_operators_see_comments_imports_and_forks_read_only(
    client: Any, personas: Any, rich_session: Any
) -> None:
    from django.urls import reverse

    from agentide.transcripts.models import Annotation

    personas.owner.is_staff = personas.owner.is_superuser = True
    personas.owner.save()
    client.force_login(personas.owner)
    for name in ["annotation", "transcriptimport", "fork"]:
        assert client.get(reverse(f"admin:transcripts_{name}_changelist")).status_code == 200
    comment = Annotation.objects.get(session=rich_session)
    page = client.get(reverse("admin:transcripts_annotation_change", args=[comment.pk]))
    assert page.status_code == 200 and "Why was /nope expected?" in page.content.decode()
    assert client.get(reverse("admin:transcripts_annotation_add")).status_code == 403
