"""Search across the team's sessions: PostgreSQL full-text search, team-scoped."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.urls import reverse

from agentide.sessions import execution
from agentide.sessions import services as notebook
from agentide.transcripts import search
from agentide.transcripts.models import SearchEntry

pytestmark = pytest.mark.django_db


def test_it_finds_commands_outputs_prompts_answers_and_comments(
    personas: Any, rich_session: Any
) -> None:
    member = personas.membership(personas.reviewer)
    kinds = {
        "nope": {"command", "output", "answer", "comment"},
        "fail": {"prompt"},
        "compaction": set(),
        "Plan": {"note"},
    }
    for query, expected in kinds.items():
        hits = search.search(member, query)
        assert {h.kind for h in hits} >= expected, query
        assert all(h.session_id == rich_session.pk for h in hits)
    assert connection.vendor == "postgresql"
    assert SearchEntry.objects.filter(vector__isnull=False).exists()


def test_the_index_follows_new_events(
    personas: Any, project: Any, rich_session: Any, no_tasks: Any
) -> None:
    member = personas.membership(personas.member)
    assert search.search(member, "flamingo") == []
    execution.submit_cell(member, rich_session, "shell", "echo flamingo")
    (hit,) = search.search(member, "flamingo")
    assert hit.kind == "command" and hit.seq == rich_session.last_seq + 1


def test_search_is_team_scoped(
    client: Any, personas: Any, rich_session: Any, no_tasks: Any
) -> None:
    from agentide.projects.models import Project

    other = Project.objects.create(team=personas.other_team, name="X", slug="x")
    theirs = notebook.create_session(personas.other_team.memberships.get(), other, "Theirs")
    execution.submit_cell(personas.other_team.memberships.get(), theirs, "shell", "ls /nope")
    client.force_login(personas.reviewer)
    body = client.get(reverse("transcript_search", args=["acme"]), {"q": "nope"}).content.decode()
    assert reverse("transcript_detail", args=[rich_session.pk]) in body
    assert reverse("transcript_detail", args=[theirs.pk]) not in body
    assert client.get(reverse("transcript_search", args=["other"]), {"q": "x"}).status_code == 404


def test_the_sqlite_fallback_matches_every_word(
    personas: Any, rich_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "vendor", "sqlite")
    member = personas.membership(personas.member)
    hits = search.search(member, "cannot ACCESS")
    assert {h.kind for h in hits} == {"output"}
    assert "cannot access" in hits[0].snippet


def test_the_beat_task_indexes_every_team(personas: Any, rich_session: Any) -> None:
    from django.conf import settings

    from agentide.transcripts import tasks

    assert tasks.refresh_search_index() > 0
    assert tasks.refresh_search_index() == 0
    assert SearchEntry.objects.filter(session=rich_session, kind="answer").count() == 2
    entry = settings.CELERY_BEAT_SCHEDULE["transcripts-refresh-search-index"]
    assert entry["task"] == tasks.refresh_search_index.name


def test_the_team_page_links_search_and_import(client: Any, personas: Any) -> None:
    for who, can_import in [("member", True), ("reviewer", False)]:
        client.force_login(getattr(personas, who))
        body = client.get(reverse("team_detail", args=["acme"])).content.decode()
        assert reverse("transcript_search", args=["acme"]) in body
        assert (reverse("transcript_import", args=["acme"]) in body) == can_import


def test_the_search_vector_has_a_gin_index(personas: Any, rich_session: Any) -> None:
    search.search(personas.membership(personas.member), "nope")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'transcripts_searchentry_vector_gin'"
        )
        (definition,) = cursor.fetchone()
        assert "USING gin (vector)" in definition
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            "EXPLAIN SELECT id FROM transcripts_searchentry "
            "WHERE vector @@ websearch_to_tsquery('simple', 'nope')"
        )
        plan = " ".join(row[0] for row in cursor.fetchall())
    assert "transcripts_searchentry_vector_gin" in plan
