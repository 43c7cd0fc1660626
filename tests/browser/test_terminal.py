"""The shared terminal in Debian's Chromium: xterm.js over the session socket, against
Daphne, a real Celery worker (terminal queue) and Docker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from agentide.projects.models import Project
from agentide.sandboxes import services as sandboxes
from agentide.sessions import services, terminals
from agentide.sessions.models import Session
from tests.support import open_page, wait_until

pytestmark = pytest.mark.browser

# Every line of the terminal's buffer (scrollback included), as text.
BUFFER = """() => {
  const buffer = window.notebookTerminal.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
  return lines.join('\\n');
}"""


@pytest.fixture
def shared(personas: Any) -> Any:
    project = Project.objects.create(team=personas.team, name="Demo", slug="demo")
    return services.create_session(personas.membership(personas.member), project, "Pairing")


@pytest.fixture(autouse=True)
def cleanup(transactional_db: None) -> Iterator[None]:
    yield
    for session in Session.objects.all():
        if terminals.is_running(session.pk):
            terminals.send_close(session.pk, session.created_by_id)
            wait_until(lambda s=session: not terminals.is_running(s.pk), timeout=30,
                       what="the terminal pump to stop")
        sandboxes.destroy_sandbox(session)


def buffer(page: Any) -> str:
    return str(page.evaluate(BUFFER))


def shows(page: Any, needle: str, timeout: float = 60) -> str:
    return wait_until(lambda: needle in buffer(page) and buffer(page), timeout=timeout,
                      what=f"the terminal to show {needle!r}")


def open_terminal(page: Any) -> None:
    page.click("#terminal-open")
    expect(page.locator("#terminal-panel[data-running='1']")).to_be_visible(timeout=90000)
    page.click("#terminal-screen")
    type_line(page, "echo ready-$((1+1))")
    shows(page, "ready-2", timeout=90)


def type_line(page: Any, text: str) -> None:
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def test_type_and_see_output_top_and_a_program_reading_the_terminal(
    browser, daphne_server, celery_worker, personas, shared, screenshot
):
    page = open_page(browser, daphne_server, personas.member, shared)
    open_terminal(page)
    type_line(page, "echo hello-$((6*7))")
    expect(page.locator("#terminal-screen .xterm-rows")).to_contain_text("hello-42")
    type_line(page, "top -b -n1 | head -5; echo top-$((1+1))done")
    text = shows(page, "top-2done")
    assert "Tasks:" in text
    type_line(page, "read -p 'name? ' n; echo hi-$n")
    shows(page, "\nname? ")
    type_line(page, "ada")
    shows(page, "hi-ada")
    screenshot(page, "terminal")
    assert page.errors == []


def test_two_browsers_share_the_screen_and_a_reviewer_cannot_type(
    browser, daphne_server, celery_worker, personas, shared
):
    a = open_page(browser, daphne_server, personas.member, shared)
    b = open_page(browser, daphne_server, personas.reviewer, shared)
    assert b.locator("#terminal-open").count() == 0
    open_terminal(a)
    type_line(a, "echo shared-$((20+1))")
    shows(a, "shared-21")
    shows(b, "shared-21")
    expect(b.locator("#terminal-typing")).to_contain_text("member is typing")
    # The reviewer's keystrokes go nowhere...
    b.click("#terminal-screen")
    type_line(b, "echo forged-$((1+1))")
    # ...and a forged term.input over a raw socket is refused.
    refusal = b.evaluate(
        """(path) => new Promise((resolve) => {
            const ws = new WebSocket('ws://' + location.host + path + '?last_seq=999999');
            ws.onopen = () => ws.send(JSON.stringify(
                {type: 'term.input', data: btoa('echo forged-$((1+1))\\r')}));
            ws.onmessage = (e) => {
                const f = JSON.parse(e.data);
                if (f.type === 'term.error') { ws.close(); resolve(f.message); }
            };
        })""",
        f"/ws/sessions/{shared.pk}/",
    )
    assert refusal == "reviewers cannot type"
    type_line(a, "echo after-$((2+2))")
    shows(a, "after-4")
    shows(b, "after-4")
    # Both screens converge (the prompt after the output may reach one a moment later).
    wait_until(lambda: buffer(a) == buffer(b), what="both screens to show the same lines")
    assert "forged" not in buffer(a) and "forged" not in buffer(b)


def test_a_reload_while_output_streams_shows_each_line_once(
    browser, daphne_server, celery_worker, personas, shared
):
    page = open_page(browser, daphne_server, personas.member, shared)
    open_terminal(page)
    type_line(page, "for i in $(seq 1 60); do echo line-$i; sleep 0.05; done; echo end-$((1+1))")
    shows(page, "line-3\n")
    page.reload()
    page.wait_for_selector("#connection[data-state=live]")
    text = shows(page, "end-2")
    for i in range(1, 61):
        assert text.count(f"\nline-{i}\n") == 1, (i, text)


def test_yes_keeps_the_page_responsive_and_the_ring_bounded(
    browser, daphne_server, celery_worker, personas, shared
):
    page = open_page(browser, daphne_server, personas.member, shared)
    open_terminal(page)
    type_line(page, "timeout 5 yes; echo yes-done-$((1+1))")
    shows(page, "\ny\ny\n")
    # A click still works while the flood goes on.
    page.click("input[name=kind][value=note]")
    expect(page.locator("input[name=kind][value=note]")).to_be_checked()
    shows(page, "yes-done-2", timeout=90)
    data, end = terminals.ring_snapshot(shared.pk)
    assert len(data) <= terminals.RING_BYTES < end
    assert page.errors == []
