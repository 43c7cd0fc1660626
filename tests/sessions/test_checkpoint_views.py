"""The notebook's diff and restore endpoints, on real checkpoints of a real sandbox: what a
cell changed (escaped, bounded), who may restore, and what a restore refuses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from agentide.sessions import changes, execution
from agentide.sessions.models import Cell

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def destroy_sandboxes() -> Iterator[None]:
    yield
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions.models import Session

    for session in Session.objects.all():
        sandboxes.destroy_sandbox(session)


def run(personas: Any, session: Any, source: str) -> Cell:
    """Submit a shell cell as the member and run the queue in this process."""
    cell = execution.submit_cell(personas.membership(personas.member), session, "shell", source)
    execution.run_queued_cells(session.pk, worker="test")
    cell.refresh_from_db()
    assert cell.status == Cell.Status.FINISHED, (cell.status, cell.error, cell.output)
    return cell


def client(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


@pytest.fixture
def changed(personas: Any, session: Any, no_tasks: list[int]) -> Cell:
    """A cell that edited a text file (with markup in it), removed one, added a text and a
    binary file, after a cell that made the first two."""
    run(personas, session, "printf 'a\\nb\\nc\\n' > t.txt && printf 'x\\n' > gone.txt")
    return run(
        personas, session,
        "printf 'a\\n<script>alert(1)</script>\\nc\\n' > t.txt && rm gone.txt"
        " && printf '\\000\\001\\002' > bin.dat && echo new > new.txt",
    )


def test_the_diff_shows_exactly_the_cells_changes_escaped(personas, session, changed):
    response = client(personas.reviewer).get(f"/s/{session.pk}/cells/{changed.pk}/diff/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('class="diff-file added"') == 2
    assert html.count('class="diff-file removed"') == 1
    assert html.count('class="diff-file changed"') == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "-b" in html and "gone.txt" in html and "new.txt" in html
    assert "bin.dat" in html and "binary" in html


def test_the_page_shows_the_summary_and_the_restore_menu_to_writers_only(
    personas, session, changed
):
    member_page = client(personas.member).get(f"/s/{session.pk}/").content.decode()
    files = changes.file_changes(
        session.pk, changed.pk, changed.kind, changes.logged_checkpoints(session.pk, changed.pk)
    )
    assert (files.added, files.removed, files.changed) == (2, 1, 1)
    assert f'id="cell-{changed.pk}-files"' in member_page
    assert "Files changed:" in member_page and "+2" in member_page
    assert "Restore files to before this cell" in member_page
    reviewer_page = client(personas.reviewer).get(f"/s/{session.pk}/").content.decode()
    assert "Files changed:" in reviewer_page
    assert "Restore files to before this cell" not in reviewer_page


def test_reviewers_may_not_restore_and_outsiders_see_nothing(personas, session, changed):
    before = changes.logged_checkpoints(session.pk, changed.pk)["before"]["checkpoint"]
    response = client(personas.reviewer).post(
        f"/s/{session.pk}/restore/", {"checkpoint": before}
    )
    assert response.status_code == 403
    outsider = client(personas.outsider)
    assert outsider.get(f"/s/{session.pk}/cells/{changed.pk}/diff/").status_code == 404
    assert outsider.post(f"/s/{session.pk}/restore/", {"checkpoint": before}).status_code == 404
    assert not Cell.objects.filter(kind=Cell.Kind.RESTORE).exists()


def test_a_cell_or_checkpoint_of_another_session_is_refused(personas, session, project, changed):
    from agentide.sessions.services import create_session

    other = create_session(personas.membership(personas.member), project, "Other")
    member = client(personas.member)
    assert member.get(f"/s/{other.pk}/cells/{changed.pk}/diff/").status_code == 404
    before = changes.logged_checkpoints(session.pk, changed.pk)["before"]["checkpoint"]
    response = member.post(f"/s/{other.pk}/restore/", {"checkpoint": before})
    assert response.status_code == 422
    response = member.post(f"/s/{session.pk}/restore/", {"checkpoint": "<b>nope</b>"})
    assert response.status_code == 422 and b"<b>" not in response.content
    for bad in ("\u00b2", "", "-1", "1e3", str(2**70)):
        response = member.post(f"/s/{session.pk}/restore/", {"checkpoint": bad})
        assert response.status_code == 422, bad
    assert not Cell.objects.filter(kind=Cell.Kind.RESTORE).exists()


def test_a_restore_posted_by_a_writer_runs_as_a_cell(personas, session, changed, no_tasks):
    before = changes.logged_checkpoints(session.pk, changed.pk)["before"]["checkpoint"]
    response = client(personas.member).post(f"/s/{session.pk}/restore/", {"checkpoint": before})
    assert response.status_code == 200
    restore = Cell.objects.get(session=session, kind=Cell.Kind.RESTORE)
    assert restore.source == str(before) and restore.author == personas.member
    execution.run_queued_cells(session.pk, worker="test")
    restore.refresh_from_db()
    assert restore.status == Cell.Status.FINISHED, restore.error
    listing = run(personas, session, "cat t.txt gone.txt; ls")
    assert listing.output == "a\nb\nc\nx\ngone.txt\nt.txt\n"
    page = client(personas.member).get(f"/s/{session.pk}/").content.decode()
    assert "Undo restore" in page and f"before cell #{changed.position}" in page


def test_long_diffs_are_cut(personas, session, no_tasks, monkeypatch):
    monkeypatch.setattr(changes, "MAX_DIFF_FILES", 3)
    monkeypatch.setattr(changes, "MAX_TEXT_BYTES", 200)
    run(personas, session, "true")
    cell = run(personas, session, "for i in $(seq 10); do seq 1000 > f$i.txt; done")
    html = client(personas.member).get(f"/s/{session.pk}/cells/{cell.pk}/diff/").content.decode()
    assert html.count('class="diff-file added"') == 3
    assert "7 more not shown" in html
    assert len(html) < 20_000


def test_the_pages_queries_do_not_grow_with_checkpointed_cells(personas, session, no_tasks):
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    member = client(personas.member)

    def queries() -> int:
        cache.clear()  # the counts too are computed afresh
        with CaptureQueriesContext(connection) as captured:
            assert member.get(f"/s/{session.pk}/").status_code == 200
        return len(captured)

    run(personas, session, "echo 1 > one")
    run(personas, session, "echo 2 > two")
    few = queries()
    for i in range(4):
        run(personas, session, f"echo {i} > more{i}")
    page = member.get(f"/s/{session.pk}/").content.decode()
    assert page.count("Files changed:") == 6
    assert queries() == few
