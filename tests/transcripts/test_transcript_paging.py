"""The transcript page is paged: the first page of blocks, the next ones as the reader
scrolls, a page opened at the block of a linked event, constant queries per page."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import reverse

from agentide.events import registry
from agentide.events.models import Event
from agentide.sessions import services as sessions
from agentide.transcripts.view import PAGE_BLOCKS
from tests.transcripts.paging import long_session

pytestmark = pytest.mark.django_db

CELL = re.compile(r'<article class="tr-cell')
ANCHOR = re.compile(r'id="e-(\d+)"')
LATER = re.compile(r'id="tr-later" hx-get="([^"]+)"')
EARLIER = re.compile(r'id="tr-earlier"><button type="button" class="small" hx-get="([^"]+)"')


@pytest.fixture
def make_session(personas: Any, project: Any, no_tasks: list[int]) -> Any:
    def make(cells: int) -> Any:
        member = personas.membership(personas.member)
        session = sessions.create_session(member, project, "Long run")
        return long_session(personas, session, cells)

    return make


def get(client: Any, url: str) -> str:
    response = client.get(url.replace("&amp;", "&"))
    assert response.status_code == 200, response.content
    return response.content.decode()


def detail(session: Any, query: str = "") -> str:
    return reverse("transcript_detail", args=[session.pk]) + query


@pytest.mark.parametrize("cells", [10, 200])
def test_a_page_costs_the_same_queries_at_10_and_200_cells(
    client: Any, personas: Any, make_session: Any, cells: int, django_assert_max_num_queries: Any
) -> None:
    session = make_session(cells)
    client.force_login(personas.reviewer)
    with django_assert_max_num_queries(12):
        body = get(client, detail(session))
    assert len(CELL.findall(body)) == min(cells, PAGE_BLOCKS)
    assert "Comment on 0" in body
    assert (LATER.search(body) is not None) == (cells > PAGE_BLOCKS)
    if cells > PAGE_BLOCKS:
        match = LATER.search(body)
        assert match is not None
        with django_assert_max_num_queries(12):
            more = get(client, match.group(1))
        assert len(CELL.findall(more)) == PAGE_BLOCKS
    late = Event.objects.filter(session=session, type=registry.AGENT_OUTPUT).last()
    assert late is not None
    with django_assert_max_num_queries(12):
        body = get(client, detail(session, f"?at={late.seq}"))
    assert f'id="e-{late.seq}"' in body


def test_scrolling_down_the_pages_shows_every_event_once_in_order(
    client: Any, personas: Any, make_session: Any
) -> None:
    session = make_session(130)
    client.force_login(personas.reviewer)
    body = get(client, detail(session))
    assert EARLIER.search(body) is None
    pages = [body]
    while match := LATER.search(pages[-1]):
        assert "up_to=" in match.group(1)
        pages.append(get(client, match.group(1)))
    assert [len(CELL.findall(p)) for p in pages] == [50, 50, 30]
    anchors = [int(n) for p in pages for n in ANCHOR.findall(p)]
    seqs = list(Event.objects.filter(session=session).values_list("seq", flat=True))
    assert sorted(anchors) == seqs, "every event exactly once"
    created = list(
        Event.objects.filter(session=session, type=registry.CELL_CREATED).values_list(
            "seq", flat=True
        )
    )
    assert [a for a in anchors if a in set(created)] == created


def test_a_later_page_is_as_of_what_the_page_loaded(
    client: Any, personas: Any, make_session: Any
) -> None:
    session = make_session(60)
    client.force_login(personas.reviewer)
    match = LATER.search(get(client, detail(session)))
    assert match is not None
    long_session(personas, session, 3)  # appended after the page loaded
    more = get(client, match.group(1))
    assert len(CELL.findall(more)) == 10
    assert "echo cell 57</pre>" in more and "echo cell 1</pre>" not in more


def test_a_link_to_a_late_event_opens_at_its_block_with_the_earlier_ones_on_demand(
    client: Any, personas: Any, make_session: Any
) -> None:
    session = make_session(200)
    client.force_login(personas.reviewer)
    target = Event.objects.filter(session=session, type=registry.AGENT_OUTPUT)[40]
    body = get(client, detail(session, f"?at={target.seq}"))
    assert f'id="e-{target.seq}"' in body
    # The page starts at the target's cell (cell 162 of 200) and runs to the end.
    created = Event.objects.get(cell_id=target.cell_id, type=registry.CELL_CREATED)
    first = re.search(r'<article class="tr-cell[^"]*" id="e-(\d+)"', body)
    assert first is not None and int(first.group(1)) == created.seq
    assert len(CELL.findall(body)) == 200 - 162 and LATER.search(body) is None
    match = EARLIER.search(body)
    assert match is not None
    earlier = get(client, match.group(1))
    assert len(CELL.findall(earlier)) == PAGE_BLOCKS
    assert EARLIER.search(earlier) is not None and LATER.search(earlier) is None
    assert max(int(n) for n in ANCHOR.findall(earlier)) < created.seq

    # An event on the first page opens the page from the top.
    early = Event.objects.filter(session=session, type=registry.AGENT_OUTPUT)[2]
    body = get(client, detail(session, f"?at={early.seq}"))
    assert EARLIER.search(body) is None and f'id="e-{early.seq}"' in body


def test_search_hits_comments_and_filters_link_to_the_page_that_holds_the_event(
    client: Any, personas: Any, make_session: Any
) -> None:
    session = make_session(200)
    client.force_login(personas.reviewer)
    hits = get(client, reverse("transcript_search", args=[personas.team.slug]) + "?q=agent+190")
    hit = re.search(r'href="(/s/\d+/transcript/\?at=(\d+)#e-\d+)"', hits)
    assert hit is not None
    assert f'id="e-{hit.group(2)}"' in get(client, hit.group(1))

    late = Event.objects.filter(session=session, type=registry.CELL_CREATED).last()
    assert late is not None
    response = client.post(
        reverse("annotation_create", args=[session.pk]), {"seq": late.seq, "body": "Late one"}
    )
    assert response.status_code == 302
    assert response["Location"].endswith(f"?at={late.seq}#e-{late.seq}")
    assert "Late one" in get(client, response["Location"].split("#")[0])
    # The comment form of a late event opens on its page.
    assert 'id="comment-form"' in get(client, detail(session, f"?comment={late.seq}"))

    body = get(client, detail(session, "?show=commands"))
    match = LATER.search(body)
    assert match is not None and "show=commands" in match.group(1)
    assert "Note " not in get(client, match.group(1))


def test_exports_stay_whole(client: Any, personas: Any, make_session: Any) -> None:
    session = make_session(60)
    client.force_login(personas.reviewer)
    html = get(client, reverse("transcript_export", args=[session.pk, "html"]))
    assert len(CELL.findall(html)) == 60 and "tr-later" not in html
    seqs = list(Event.objects.filter(session=session).values_list("seq", flat=True))
    assert sorted(int(n) for n in ANCHOR.findall(html)) == seqs


def test_the_blocks_view_has_the_pages_access_rules(
    client: Any, personas: Any, make_session: Any
) -> None:
    session = make_session(3)
    url = reverse("transcript_blocks", args=[session.pk])
    client.force_login(personas.outsider)
    assert client.get(url, {"after": 1, "up_to": session.last_seq}).status_code == 404
    client.force_login(personas.reviewer)
    assert client.get(url, {"after": 1, "up_to": session.last_seq}).status_code == 200
    assert client.get(url, {"after": 1}).status_code == 400
    assert client.get(url, {"after": 1, "before": 3, "up_to": 9}).status_code == 400
    assert client.get(url, {"after": "x", "up_to": 9}).status_code == 400
