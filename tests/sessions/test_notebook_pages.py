"""Long sessions: the page shows the most recent cells and loads older ones a page at a time,
with a number of queries that does not grow with the number of cells."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from agentide.events import log as event_log
from agentide.events import registry
from agentide.sessions import execution, notebook, presence
from agentide.sessions.models import Cell

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_presence(monkeypatch: pytest.MonkeyPatch) -> None:
    # The page asks Redis who is viewing: not a database query, and not what is measured here.
    monkeypatch.setattr(presence, "viewer_ids", lambda ids: {i: [] for i in ids})


def fill(personas: Any, session: Any, count: int) -> list[Cell]:
    """``count`` cells: shell cells with output and an end, notes, and prompt cells
    (cancelled before they run)."""
    member = personas.membership(personas.member)
    cells = []
    for i in range(count):
        if i % 5 == 4:
            cells.append(execution.submit_cell(member, session, "note", f"note {i}"))
            continue
        if i % 5 == 3:
            cell = execution.submit_cell(member, session, "prompt", f"prompt {i}")
            execution.cancel_cell(member, session, cell.pk)
            cells.append(cell)
            continue
        cell = execution.submit_cell(member, session, "shell", f"echo {i}")
        claimed = execution.claim_next_cell(session.pk)
        assert claimed is not None and claimed.pk == cell.pk
        event_log.append_event(
            session.pk, registry.CELL_OUTPUT, {"text": f"out {i}\n", "sgr": ""}, cell=cell
        )
        execution.finish_cell(cell, status=Cell.Status.FINISHED, outcome="exit", exit_code=0)
        cells.append(cell)
    return cells


@pytest.mark.parametrize("count", [10, 200])
def test_the_session_page_costs_the_same_queries_at_10_and_200_cells(
    client, personas, session, no_tasks, no_presence, count, django_assert_max_num_queries
):
    fill(personas, session, count)
    client.force_login(personas.member)
    with django_assert_max_num_queries(10):
        response = client.get(reverse("session_detail", args=[session.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    shown = min(count, notebook.PAGE_CELLS)
    assert body.count('class="cell cell-') == shown
    assert "note 199" in body if count == 200 else "note 9" in body
    assert body.count('class="agent-steps"') == shown // 5
    assert ('id="cells-older"' in body) == (count > notebook.PAGE_CELLS)


def test_older_cells_come_a_page_at_a_time_as_of_the_browsers_seq(
    client, personas, session, no_tasks, django_assert_max_num_queries
):
    cells = fill(personas, session, 120)
    session.refresh_from_db()
    first_page = notebook.notebook_view(session)
    assert [c.id for c in first_page.cells] == [c.pk for c in cells[-50:]]
    assert first_page.older is not None
    client.force_login(personas.reviewer)
    url = reverse("session_cells", args=[session.pk])
    with django_assert_max_num_queries(10):
        response = client.get(url, {"before": first_page.older, "up_to": first_page.last_seq})
    body = response.content.decode()
    assert body.count('class="cell cell-') == 50
    assert f'id="cell-{cells[20].pk}"' in body and f'id="cell-{cells[69].pk}"' in body
    assert f'id="cell-{cells[19].pk}"' not in body
    assert 'id="cells-older"' in body  # and the sentinel for the 20 before them
    second = notebook.notebook_view(session, up_to=first_page.last_seq, before=first_page.older)
    last = notebook.notebook_view(session, up_to=first_page.last_seq, before=second.older)
    assert [c.id for c in last.cells] == [c.pk for c in cells[:20]] and last.older is None

    # A cell's state as of the seq the browser has: later events arrive over its socket.
    shell = cells[0]
    seq_before = first_page.last_seq
    event_log.append_event(session.pk, registry.CELL_OUTPUT, {"text": "late\n"}, cell=shell)
    session.refresh_from_db()
    view = notebook.notebook_view(session, up_to=seq_before, before=second.older)
    assert view.cells[0].output == "out 0\n"
    assert notebook.notebook_view(session, before=second.older).cells[0].output == "out 0\nlate\n"


def test_the_older_page_refuses_outsiders_and_bad_numbers(client, personas, session):
    url = reverse("session_cells", args=[session.pk])
    client.force_login(personas.outsider)
    assert client.get(url, {"before": 5, "up_to": 5}).status_code == 404
    client.force_login(personas.reviewer)
    assert client.get(url, {"before": "x", "up_to": 5}).status_code == 400
