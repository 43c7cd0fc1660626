"""Comments in the live session page: first render and the live fragments."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from agentide.events import log as event_log
from agentide.events.models import Event
from agentide.sessions import notebook as page
from agentide.sessions import presence
from agentide.sessions.notebook import render_event
from agentide.transcripts import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        page,
        "sandbox_summary",
        lambda session, stats=False: {"state": "none", "label": "No sandbox yet", "stats": None},
    )
    monkeypatch.setattr(presence, "viewers", lambda session_id: [])


def test_the_session_page_shows_comments_and_links_the_transcript(
    client: Any, personas: Any, rich_session: Any, no_sandbox: None
) -> None:
    client.force_login(personas.member)
    body = client.get(reverse("session_detail", args=[rich_session.pk])).content.decode()
    assert reverse("transcript_detail", args=[rich_session.pk]) in body
    assert "Why was /nope expected? &lt;i&gt;hm&lt;/i&gt;" in body
    assert 'id="comments-cell-' in body
    assert "open comment" not in body  # the fixture's comment is resolved
    services.add_annotation(
        personas.membership(personas.reviewer), rich_session, 1, "Is this expected?"
    )
    body = client.get(reverse("session_detail", args=[rich_session.pk])).content.decode()
    assert "Transcript · 1 open comment<" in body


def test_comment_events_render_as_live_fragments(personas: Any, rich_session: Any) -> None:
    target = Event.objects.get(session=rich_session, type="agent.tool_call")
    reviewer = personas.membership(personas.reviewer)
    comment = services.add_annotation(reviewer, rich_session, target.seq, "Live <b>note</b>")
    added = event_log.events_after(rich_session.pk, comment.seq - 1, up_to=comment.seq)[0]
    html = render_event(added, session_id=rich_session.pk)
    assert f'hx-swap-oob="beforeend:#comments-cell-{target.cell_id}"' in html
    assert "Live &lt;b&gt;note&lt;/b&gt;" in html

    services.set_annotation_resolved(reviewer, rich_session, comment.seq, True)
    resolved = event_log.events_after(rich_session.pk, comment.seq)[0]
    html = render_event(resolved, session_id=rich_session.pk)
    assert f'id="cell-comment-{comment.seq}" hx-swap-oob="outerHTML"' in html
    assert "resolved" in html


def test_comments_on_session_events_stay_in_the_transcript(
    personas: Any, rich_session: Any
) -> None:
    target = Event.objects.get(session=rich_session, type="sandbox.state")
    comment = services.add_annotation(
        personas.membership(personas.member), rich_session, target.seq, "ok"
    )
    added = event_log.events_after(rich_session.pk, comment.seq - 1)[0]
    assert render_event(added, session_id=rich_session.pk) == ""


def test_prompt_cells_offer_a_fork_to_writers_only(
    client: Any, personas: Any, rich_session: Any, no_sandbox: None
) -> None:
    fork_url = reverse("fork_create", args=[rich_session.pk, 5])
    for who, offered in [("member", True), ("reviewer", False)]:
        client.force_login(getattr(personas, who))
        body = client.get(reverse("session_detail", args=[rich_session.pk])).content.decode()
        assert (fork_url in body) == offered, who


def test_a_page_fetches_all_its_comments_at_once(
    personas: Any, rich_session: Any, django_assert_num_queries: Any
) -> None:
    from agentide.transcripts.display import comments_by_cell

    bad = rich_session.cells.get(position=2)
    with django_assert_num_queries(2):
        by_cell = comments_by_cell(rich_session.pk, up_to=rich_session.last_seq)
    assert [c.body for c in by_cell[bad.pk]] == ["Why was /nope expected? <i>hm</i>"]
    assert comments_by_cell(rich_session.pk, up_to=3) == {}


def test_append_events_continues_the_log_in_one_go(
    personas: Any, rich_session: Any, django_assert_max_num_queries: Any
) -> None:
    before = rich_session.last_seq
    new = [Event(type="sandbox.state", payload={"state": f"s{i}"}) for i in range(1500)]
    with django_assert_max_num_queries(8):
        created = event_log.append_events(rich_session.pk, new)
    assert [e.seq for e in created] == list(range(before + 1, before + 1501))
    rich_session.refresh_from_db()
    assert rich_session.last_seq == before + 1500
    stored = list(
        Event.objects.filter(session=rich_session, seq__gt=before).values_list("seq", "payload")
    )
    assert stored[0] == (before + 1, {"state": "s0"}) and len(stored) == 1500
    assert event_log.append_events(rich_session.pk, []) == []
