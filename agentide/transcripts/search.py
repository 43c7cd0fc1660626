"""Full-text search over the team's transcripts: an index of the log kept per session up to
a cursor, refreshed before each search and by Celery beat."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector
from django.db import connection, transaction
from django.db.models import F, Func, Q, TextField, Value
from django.db.models.expressions import CombinedExpression

from agentide.accounts.models import Membership
from agentide.events import registry
from agentide.events.models import Event
from agentide.sessions.models import Session
from agentide.transcripts.models import SearchCursor, SearchEntry
from agentide.transcripts.view import Row

# --- search ---------------------------------------------------------------------------------

SNIPPET_CHARS = 160
MAX_ENTRY_CHARS = 200_000


def _entries_for(row: Row, session: Session, team_id: int) -> Iterable[SearchEntry]:
    payload = row.payload
    kind = ""
    text = ""
    if row.type == registry.CELL_CREATED:
        kind = {"shell": SearchEntry.Kind.COMMAND, "prompt": SearchEntry.Kind.PROMPT}.get(
            str(payload.get("kind")), SearchEntry.Kind.NOTE
        )
        text = str(payload.get("source", ""))
    elif row.type == registry.CELL_OUTPUT:
        kind, text = SearchEntry.Kind.OUTPUT, str(payload.get("text", ""))
    elif row.type == registry.AGENT_MESSAGE:
        kind, text = SearchEntry.Kind.ANSWER, str(payload.get("text", ""))
    elif row.type == registry.AGENT_COMMAND_STARTED:
        kind, text = SearchEntry.Kind.COMMAND, str(payload.get("command", ""))
    elif row.type == registry.AGENT_OUTPUT:
        kind, text = SearchEntry.Kind.OUTPUT, str(payload.get("text", ""))
    elif row.type == registry.ANNOTATION_ADDED:
        kind, text = SearchEntry.Kind.COMMENT, str(payload.get("body", ""))
    if kind and text.strip():
        yield SearchEntry(
            session=session, team_id=team_id, seq=row.seq, kind=kind, text=text[:MAX_ENTRY_CHARS]
        )


def index_session(session: Session) -> int:
    """Add the session's events after its search cursor to the index; return how many
    entries were added. Safe to call concurrently (the cursor row is locked)."""
    team_id = session.project.team_id
    with transaction.atomic():
        cursor, _ = SearchCursor.objects.select_for_update().get_or_create(session=session)
        events = (
            Event.objects.filter(session=session, seq__gt=cursor.indexed_seq)
            .order_by("seq")
            .only("seq", "type", "payload", "cell_id", "created_at")
        )
        entries: list[SearchEntry] = []
        last = cursor.indexed_seq
        for event in events.iterator(chunk_size=1000):
            last = event.seq
            row = Row(event.seq, event.type, event.created_at, "", event.payload, event.cell_id)
            entries.extend(_entries_for(row, session, team_id))
        if last == cursor.indexed_seq:
            return 0
        created = SearchEntry.objects.bulk_create(entries, batch_size=500)
        if connection.vendor == "postgresql" and created:
            SearchEntry.objects.filter(session=session, seq__gt=cursor.indexed_seq).update(
                vector=_search_vector()
            )
        SearchCursor.objects.filter(pk=cursor.pk).update(indexed_seq=last)
    return len(entries)


def _search_vector() -> CombinedExpression:
    """The text's words as PostgreSQL parses them, plus its words split at punctuation: the
    parser keeps ``/etc/hosts`` or ``a.b`` whole, and "hosts" should find them too."""
    config = settings.TRANSCRIPT_SEARCH_CONFIG
    split = Func(
        F("text"),
        Value(r"[^\w]+"),
        Value(" "),
        Value("g"),
        function="regexp_replace",
        output_field=TextField(),
    )
    return SearchVector("text", config=config) + SearchVector(split, config=config)


def refresh_search_index(team_id: int | None = None) -> int:
    """Bring the index of every session of the team (of every team for None) up to date;
    return how many entries were added."""
    sessions = Session.objects.all()
    cursors = SearchCursor.objects.filter(indexed_seq__gte=F("session__last_seq"))
    if team_id is not None:
        sessions = sessions.filter(project__team_id=team_id)
        cursors = cursors.filter(session__project__team_id=team_id)
    stale = sessions.exclude(pk__in=cursors.values("session_id")).select_related("project")
    return sum(index_session(session) for session in stale.iterator(chunk_size=200))


@dataclass
class SearchHit:
    session_id: int
    session_title: str
    project: str
    seq: int
    kind: str
    snippet: str
    imported: bool = False


def search(membership: Membership, query: str, *, limit: int = 50) -> list[SearchHit]:
    """Search the team's sessions (commands, outputs, prompts, answers, notes, comments).

    PostgreSQL: full-text search (websearch syntax) over the GIN-indexed vector, best
    matches first. Elsewhere: every word must appear (case-insensitive), newest first.
    Only sessions of ``membership``'s team are searched.
    """
    query = query.strip()[:200]
    if not query:
        return []
    refresh_search_index(membership.team_id)
    entries = SearchEntry.objects.filter(team_id=membership.team_id).select_related(
        "session__project"
    )
    if connection.vendor == "postgresql":
        sq = SearchQuery(query, search_type="websearch", config=settings.TRANSCRIPT_SEARCH_CONFIG)
        entries = entries.filter(vector=sq).annotate(rank=SearchRank(F("vector"), sq))
        entries = entries.order_by("-rank", "-session__last_activity_at", "seq")
    else:
        condition = Q()
        for word in query.split():
            condition &= Q(text__icontains=word)
        entries = entries.filter(condition).order_by("-session__last_activity_at", "seq")
    words = [w for w in re.split(r"\W+", query) if w]
    return [
        SearchHit(
            session_id=e.session_id,
            session_title=e.session.title,
            project=e.session.project.name,
            seq=e.seq,
            kind=e.kind,
            snippet=_snippet(e.text, words),
            imported=e.session.imported,
        )
        for e in entries[:limit]
    ]


def _snippet(text: str, words: list[str]) -> str:
    lowered = text.lower()
    positions = [p for p in (lowered.find(w.lower()) for w in words) if p >= 0]
    start = max(0, min(positions) - SNIPPET_CHARS // 3) if positions else 0
    piece = text[start : start + SNIPPET_CHARS]
    return ("…" if start else "") + piece + ("…" if start + SNIPPET_CHARS < len(text) else "")
