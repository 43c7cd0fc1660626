"""The live page in Debian's Chromium: one fragment for every viewer (the page's role hides
what a reviewer may not use) and a long session paged as the reader scrolls up, against
Daphne."""

from __future__ import annotations

from typing import Any

import pytest

from agentide.events import log as event_log
from agentide.events import registry
from agentide.projects.models import Project
from agentide.sessions import execution, services
from agentide.sessions.models import Cell
from tests.browser.test_notebook import open_page
from tests.conftest import wait_until

pytestmark = pytest.mark.browser

REFUSE_CANCEL = """([path, cellId]) => new Promise((resolve) => {
    const ws = new WebSocket('ws://' + location.host + path + '?last_seq=999999');
    ws.onopen = () => ws.send(JSON.stringify({type: 'cancel', cell_id: cellId}));
    ws.onmessage = (e) => { const f = JSON.parse(e.data);
                            if (f.type === 'error') { ws.close(); resolve(f.message); } };
})"""


@pytest.fixture
def long_session(personas: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A session with 120 finished cells; shell cells are never handed to a worker here."""
    monkeypatch.setattr(execution, "wake_scheduler", lambda session_id: None)
    project = Project.objects.create(team=personas.team, name="Long", slug="long")
    member = personas.membership(personas.member)
    session = services.create_session(member, project, "A long day")
    for i in range(120):
        cell = execution.submit_cell(member, session, "shell", f"echo {i}")
        execution.claim_next_cell(session.pk)
        event_log.append_event(
            session.pk, registry.CELL_OUTPUT, {"text": f"line {i}\n", "sgr": ""}, cell=cell
        )
        execution.finish_cell(cell, status=Cell.Status.FINISHED, outcome="exit", exit_code=0)
    return session


def test_a_long_session_pages_older_cells_in_as_the_reader_scrolls_up(
    browser, daphne_server, personas, long_session, screenshot
):
    member = open_page(browser, daphne_server, personas.member, long_session)
    reviewer = open_page(browser, daphne_server, personas.reviewer, long_session)
    cells = reviewer.locator("#cells .cell")
    assert cells.count() == 50
    assert cells.last.locator("pre.output").text_content() == "line 119\n"

    # A new cell while the reviewer reads: the same fragment reaches both pages; only the
    # member's shows its Cancel button, and the reviewer's socket refuses a cancel.
    cell = execution.submit_cell(
        personas.membership(personas.member), long_session, "shell", "echo queued"
    )
    for page in (member, reviewer):
        page.wait_for_selector(f"#cell-{cell.pk}")
    assert member.locator(f"#cell-{cell.pk} button.cancel").is_visible()
    assert reviewer.locator(f"#cell-{cell.pk} button.cancel").count() == 1
    assert not reviewer.locator(f"#cell-{cell.pk} button.cancel").is_visible()
    hidden = "button.cancel:visible, #composer, #session-title form:visible"
    assert reviewer.locator(hidden).count() == 0
    refusal = reviewer.evaluate(REFUSE_CANCEL, [f"/ws/sessions/{long_session.pk}/", cell.pk])
    assert "read-only" in refusal
    assert Cell.objects.get(pk=cell.pk).status == Cell.Status.QUEUED

    # Scrolling to the top brings the earlier cells, a page at a time, each once.
    def scrolled_in(count: int) -> bool:
        reviewer.mouse.wheel(0, -100_000)
        return cells.count() >= count

    wait_until(lambda: scrolled_in(101), timeout=30, interval=0.3, what="the second page")
    wait_until(lambda: scrolled_in(121), timeout=30, interval=0.3, what="the first page")
    assert cells.count() == 121
    assert reviewer.locator("#cells-older").count() == 0
    outputs = reviewer.locator("#cells .cell pre.output").all_text_contents()
    assert outputs[:120] == [f"line {i}\n" for i in range(120)]
    screenshot(reviewer, "scrolled-to-the-first-cell")
    assert not member.errors + reviewer.errors


def test_events_for_cells_of_a_page_still_loading_are_applied_once_it_is_in(
    browser, daphne_server, personas, long_session
):
    reviewer = open_page(browser, daphne_server, personas.reviewer, long_session)
    held: list[Any] = []
    # Hold the first request for older cells (the later ones go through).
    reviewer.route(
        "**/cells/older/**", lambda route: route.continue_() if held else held.append(route)
    )
    frames: list[str] = []
    reviewer.on(
        "websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload)))
    )
    reviewer.reload()  # the socket's frames are recorded from here
    reviewer.wait_for_selector("#connection[data-state=live]")

    def asked_for_older() -> bool:
        reviewer.mouse.wheel(0, -100_000)
        return bool(held)

    wait_until(asked_for_older, timeout=30, interval=0.3, what="the request for older cells")
    # While that page is on its way, an old cell (not on the page yet) and a shown one get
    # output; the page holds both frames until the older cells are in.
    old = Cell.objects.get(session=long_session, position=60)
    new = Cell.objects.get(session=long_session, position=120)
    for cell in (old, new):
        event_log.append_event(
            long_session.pk, registry.CELL_OUTPUT, {"text": "late\n", "sgr": ""}, cell=cell
        )

    def received_both() -> bool:
        reviewer.locator("#cells").count()  # lets Playwright deliver the frames it has
        return sum("late" in frame for frame in frames) >= 2

    wait_until(received_both, timeout=30, interval=0.2, what="the frames with the late output")
    held[0].continue_()
    for cell in (old, new):
        reviewer.wait_for_selector(f"#cell-{cell.pk}-output:has-text('late')")
    assert reviewer.locator(f"#cell-{old.pk}-output").text_content() == "line 59\nlate\n"
    assert reviewer.locator(f"#cell-{new.pk}-output").text_content() == "line 119\nlate\n"
    # Once every page is in, frames apply at once again.
    reviewer.mouse.wheel(0, -100_000)
    reviewer.wait_for_selector("#cells .cell >> nth=119")
    event_log.append_event(
        long_session.pk, registry.CELL_OUTPUT, {"text": "later\n", "sgr": ""}, cell=new
    )
    reviewer.wait_for_selector(f"#cell-{new.pk}-output:has-text('later')")
    assert reviewer.locator("#cells .cell").count() == 120
    assert not reviewer.errors
