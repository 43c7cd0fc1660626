"""The paged transcript in Debian's Chromium against Daphne: scrolling to the bottom loads the
next page of blocks; a search hit on a late cell opens the page at that cell."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from agentide.events import registry
from agentide.events.models import Event
from agentide.sessions import services as sessions
from agentide.transcripts.view import PAGE_BLOCKS
from tests.support import logged_in_page
from tests.transcripts.paging import long_session

pytestmark = pytest.mark.browser


@pytest.fixture
def long_run(personas: Any, project: Any, no_tasks: list[int]) -> Any:
    session = sessions.create_session(personas.membership(personas.member), project, "Long run")
    return long_session(personas, session, 130)


def test_scrolling_to_the_bottom_loads_the_next_page(
    browser: Any, daphne_server: Any, personas: Any, long_run: Any, screenshot: Any
) -> None:
    page = logged_in_page(browser, daphne_server.url, personas.reviewer)
    page.goto(f"{daphne_server.url}/s/{long_run.pk}/transcript/")
    cells = page.locator("#transcript .tr-cell")
    expect(cells).to_have_count(PAGE_BLOCKS)
    page.locator("#tr-later").scroll_into_view_if_needed()
    expect(cells).to_have_count(2 * PAGE_BLOCKS)
    page.locator("#tr-later").scroll_into_view_if_needed()
    expect(cells).to_have_count(130)
    expect(page.locator("#tr-later")).to_have_count(0)
    expect(cells.last).to_contain_text("echo cell 129")
    screenshot(page, "bottom")
    assert page.errors == []


def test_a_search_hit_on_a_late_cell_opens_at_that_cell(
    browser: Any, daphne_server: Any, personas: Any, long_run: Any, screenshot: Any
) -> None:
    late = Event.objects.get(
        session=long_run, type=registry.AGENT_OUTPUT, payload__text="agent 126\n"
    )
    page = logged_in_page(browser, daphne_server.url, personas.reviewer)
    page.goto(f"{daphne_server.url}/t/{personas.team.slug}/transcripts/search/?q=126")
    page.locator(f".tr-hits a[href$='#e-{late.seq}']").click()
    target = page.locator(f"#e-{late.seq}")
    expect(target).to_contain_text("agent 126")
    expect(target).to_be_in_viewport()
    # The blocks before it come on demand.
    earlier = page.locator("#tr-earlier button")
    earlier.scroll_into_view_if_needed()
    earlier.click()
    expect(page.locator("#transcript .tr-cell").first).to_contain_text("echo cell 76")
    screenshot(page, "late-hit")
    assert page.errors == []
