"""An imported transcript speaks in nobody's name here: its actors stay plain text, its events
and its session are marked imported on every page and export, and no rename hides that."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse

from agentide.accounts.models import User
from agentide.events import log as event_log
from agentide.events.models import Event
from agentide.sessions.models import Cell, Session
from agentide.transcripts import exchange, services
from agentide.transcripts import view as transcript_view_module
from agentide.transcripts.models import Annotation

pytestmark = pytest.mark.django_db

BADGE = 'class="badge imported"'


def forged_transcript(rich_session: Any) -> bytes:
    """An export of a real session, edited to have the team's owner 'approve' in a note."""
    lines = [json.loads(line) for line in "".join(exchange.export_jsonl(rich_session)).splitlines()]
    for line in lines[1:]:
        if line["type"] == "cell.created" and line["payload"]["kind"] == "note":
            line["actor"] = "owner"
            line["payload"]["source"] = "owner approved the deploy"
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@pytest.fixture
def imported(personas: Any, project: Any, rich_session: Any) -> Session:
    return exchange.import_jsonl(
        personas.membership(personas.member), project, forged_transcript(rich_session),
        title="Audit",
    )


def page(personas: Any, url: str) -> str:
    client = Client()
    client.force_login(personas.reviewer)
    response = client.get(url)
    assert response.status_code == 200
    if response.streaming:
        return b"".join(response.streaming_content).decode()  # type: ignore[arg-type]
    return response.content.decode()


def test_imported_names_are_never_linked_to_teammates(personas, imported):
    assert imported.imported
    events = Event.objects.filter(session=imported)
    assert events.exists() and not events.filter(actor__isnull=False).exists()
    assert all(e.payload["_imported"] is True for e in events)
    assert not Cell.objects.filter(session=imported, author__isnull=False).exists()
    assert not Annotation.objects.filter(session=imported, author__isnull=False).exists()
    note = events.get(type="cell.created", payload__kind="note")
    assert note.payload["_actor"] == "owner"


def test_the_notebook_marks_imported_authors(personas, imported):
    html = page(personas, reverse("session_detail", args=[imported.pk]))
    head = re.search(r'<header class="nb-head">.*?</header>', html, re.S)
    assert head and BADGE in head.group(0)
    note = Cell.objects.get(session=imported, kind="note")
    cell = re.search(rf'<article [^>]*id="cell-{note.pk}".*?</header>', html, re.S)
    assert cell and "<strong>owner</strong>" in cell.group(0) and BADGE in cell.group(0)


def test_the_transcript_and_exports_mark_imported_events(personas, imported):
    html = page(personas, reverse("transcript_detail", args=[imported.pk]))
    assert BADGE in re.search(r"<h1>.*?</h1>", html, re.S).group(0)  # type: ignore[union-attr]
    heads = re.findall(r'<header class="tr-head">.*?</header>', html, re.S)
    assert heads and all(BADGE in head for head in heads)
    markdown = page(personas, reverse("transcript_export", args=[imported.pk, "md"]))
    assert markdown.splitlines()[0].endswith(" (imported transcript)")
    assert re.search(r"note by owner \(imported\)", markdown)
    exported = page(personas, reverse("transcript_export", args=[imported.pk, "html"]))
    assert BADGE in exported
    lines = [json.loads(line) for line in page(
        personas, reverse("transcript_export", args=[imported.pk, "jsonl"])
    ).splitlines()]
    assert lines[0]["session"]["imported"] is True
    assert all(line["payload"]["_imported"] is True for line in lines[1:])


def test_search_hits_in_imported_sessions_are_marked(personas, imported, rich_session):
    html = page(personas, reverse("transcript_search", args=["acme"]) + "?q=approved")
    hits = re.findall(r'<li><a href="/s/\d+/transcript/\?at=\d+#e-\d+">.*?</li>', html, re.S)
    assert len(hits) == 1 and "Audit" in hits[0] and BADGE in hits[0]


def test_native_comments_on_an_imported_session_stay_native(personas, imported):
    target = Event.objects.filter(session=imported).order_by("seq").first()
    services.add_annotation(personas.membership(personas.reviewer), imported, target.seq, "hm")
    rows = {row.seq: row for row in transcript_view_module.rows(imported)}
    newest = rows[max(rows)]
    assert newest.actor == "reviewer" and not newest.imported
    assert rows[target.seq].imported


def test_renaming_an_imported_session_keeps_it_marked(personas, imported):
    client = Client()
    client.force_login(personas.member)
    response = client.post(reverse("session_rename", args=[imported.pk]), {"title": "Native"})
    assert response.status_code == 200
    imported.refresh_from_db()
    assert imported.title == "Native" and imported.imported
    notebook_html = page(personas, reverse("session_detail", args=[imported.pk]))
    head = re.search(r'<header class="nb-head">.*?</header>', notebook_html, re.S)
    assert head and BADGE in head.group(0)
    listing = page(personas, reverse("project_detail", args=["acme", "demo"]))
    row = re.search(r"<tr>\s*<td><a [^>]*>Native</a>.*?</tr>", listing, re.S)
    assert row and BADGE in row.group(0)
    transcript = page(personas, reverse("transcript_detail", args=[imported.pk]))
    assert "Native" in transcript and BADGE in transcript


def test_native_sessions_show_no_badge(personas, rich_session):
    assert BADGE not in page(personas, reverse("session_detail", args=[rich_session.pk]))
    assert BADGE not in page(personas, reverse("transcript_detail", args=[rich_session.pk]))
    first = Event.objects.filter(session=rich_session).first()
    assert first is not None and not event_log.is_imported_event(first.payload)


def test_the_migration_unlinks_what_earlier_imports_linked(personas, project, rich_session):
    """Sessions imported before the flag: events linked to users by name, a later comment."""
    # The models as that migration sees them (Event was still the notebook app's then).
    apps = MigrationExecutor(connection).loader.project_state(
        ("transcripts", "0004_mark_imported_sessions")
    ).apps
    migration = importlib.import_module(
        "agentide.transcripts.migrations.0004_mark_imported_sessions"
    )
    old = exchange.import_jsonl(
        personas.membership(personas.member), project,
        "".join(exchange.export_jsonl(rich_session)).encode(),
    )
    # Recreate what the earlier import wrote: users linked by name, no flags.
    Session.objects.filter(pk=old.pk).update(imported=False)
    for event in Event.objects.filter(session=old):
        name = event.payload.pop("_actor", "")
        event.payload.pop("_imported")
        event.actor = User.objects.filter(username=name).first()
        event.save(update_fields=["payload", "actor"])
    Cell.objects.filter(session=old).update(author=personas.member)
    later = services.add_annotation(
        personas.membership(personas.reviewer), old, 1, "a native comment"
    )

    migration.mark_imported(apps, None)

    old.refresh_from_db()
    assert old.imported
    events = Event.objects.filter(session=old)
    native = events.get(seq=later.seq)
    assert native.actor == personas.reviewer and "_imported" not in native.payload
    imported_events = events.exclude(seq=later.seq)
    assert not imported_events.filter(actor__isnull=False).exists()
    assert all(e.payload["_imported"] is True for e in imported_events)
    assert imported_events.filter(payload___actor="member").exists()
    assert not Cell.objects.filter(session=old, author__isnull=False).exists()
