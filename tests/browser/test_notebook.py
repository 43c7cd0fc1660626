"""The live notebook in Debian's Chromium: two people on one session, against Daphne, a
real Celery worker and Docker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentide.projects.models import Project
from agentide.sessions import services
from agentide.sessions.models import Cell
from tests.support import open_page, start_test_daphne, wait_until

pytestmark = pytest.mark.browser

RECORD_OUTPUT = """
() => {
  window.__seen = [];
  const record = () => {
    const cells = document.querySelectorAll('#cells .cell');
    const cell = cells[cells.length - 1];
    if (!cell) return;
    const out = cell.querySelector('pre.output');
    const state = cell.querySelector('.cell-state');
    window.__seen.push([out ? out.textContent : '', state ? state.dataset.status : '']);
  };
  new MutationObserver(record).observe(document.getElementById('cells'),
    {subtree: true, childList: true, characterData: true, attributes: true});
}
"""


@pytest.fixture
def notebook(personas: Any) -> Any:
    project = Project.objects.create(team=personas.team, name="Demo", slug="demo")
    return services.create_session(personas.membership(personas.member), project, "Pairing")


@pytest.fixture(autouse=True)
def destroy_sandboxes(transactional_db: None) -> Iterator[None]:
    yield
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions.models import Session

    for session in Session.objects.all():
        sandboxes.destroy_sandbox(session)


def run(page: Any, command: str) -> None:
    page.fill("#composer-source", command)
    page.press("#composer-source", "Control+Enter")


def last_cell_status(page: Any) -> str:
    return page.locator("#cells .cell").last.locator(".cell-state").get_attribute("data-status")


def test_two_people_watch_one_session_live(
    browser, daphne_server, celery_worker, personas, notebook, screenshot
):
    a = open_page(browser, daphne_server, personas.member, notebook)
    b = open_page(browser, daphne_server, personas.reviewer, notebook)
    b.wait_for_selector("#presence >> text=2 viewing")
    b.evaluate(RECORD_OUTPUT)

    run(a, "for i in 1 2 3; do echo $i; sleep 0.3; done")
    wait_until(lambda: last_cell_status(b) == "finished", timeout=60, what="the loop to finish")
    seen = b.evaluate("window.__seen")
    for line in ("1\n", "1\n2\n", "1\n2\n3\n"):
        # B saw each line while the command was still running.
        assert any(text == line and status == "running" for text, status in seen), line
    assert b.locator("#cells .cell").last.locator("pre.output").text_content() == "1\n2\n3\n"
    screenshot(b, "1-reviewer-watching")

    # B is a reviewer: no composer, no cancel buttons, and the socket refuses a run.
    assert b.locator("#composer").count() == 0
    assert b.locator("button.cancel:visible").count() == 0
    assert b.locator("#session-title input:visible").count() == 0
    refusal = b.evaluate(
        """(path) => new Promise((resolve) => {
            const ws = new WebSocket('ws://' + location.host + path + '?last_seq=999999');
            ws.onopen = () => ws.send(JSON.stringify({type: 'run', kind: 'shell', source: 'id'}));
            ws.onmessage = (e) => { const f = JSON.parse(e.data);
                                    if (f.type === 'error') { ws.close(); resolve(f.message); } };
        })""",
        f"/ws/sessions/{notebook.pk}/",
    )
    assert "read-only" in refusal
    assert Cell.objects.filter(session=notebook).count() == 1

    # Hostile output is text: markup is escaped, colours become classes.
    run(a, r"printf '\033[31mred <script>window.__pwned=1</script>\033[0m\nplain <b>b</b>\n'")
    wait_until(lambda: b.locator("#cells .cell").count() == 2, what="the second cell")
    wait_until(lambda: last_cell_status(b) == "finished", timeout=60, what="printf")
    output = b.locator("#cells .cell").last.locator("pre.output")
    assert output.text_content() == "red <script>window.__pwned=1</script>\nplain <b>b</b>\n"
    assert output.locator("span.a-f1").text_content() == "red <script>window.__pwned=1</script>"
    assert b.evaluate("window.__pwned") is None
    assert a.evaluate("window.__pwned") is None

    # Empty commands are refused with a message.
    run(a, "   ")
    a.wait_for_selector("#composer-errors >> text=Enter a command first.")

    # A note renders sanitised Markdown.
    a.check("input[name=kind][value=note]")
    run(a, "## Findings\n\n**bold** <img src=x onerror=alert(1)>")
    b.wait_for_selector("#cells .cell-note h2:has-text('Findings')")
    assert b.locator("#cells .cell-note img").count() == 0
    screenshot(a, "2-member-after-note")

    # Progress lines drawn with \r collapse to their last state, live and after a reload.
    a.check("input[name=kind][value=shell]")
    run(a, "for i in 1 2 3 4 5; do printf '\\rprogress %d%%' $((i*20)); sleep 0.1; done; echo")
    wait_until(lambda: b.locator("#cells .cell").count() == 4, what="the progress cell")
    wait_until(lambda: last_cell_status(b) == "finished", timeout=60, what="the progress bar")
    assert b.locator("#cells .cell").last.locator("pre.output").text_content() == "progress 100%\n"

    # A big output keeps only its tail in the page, with a link to the stored copy.
    run(a, "seq 1 40000")
    wait_until(lambda: b.locator("#cells .cell").count() == 5, what="the big cell")
    wait_until(lambda: last_cell_status(b) == "finished", timeout=60, what="seq")
    big = b.locator("#cells .cell").last
    text = big.locator("pre.output").text_content()
    assert text.endswith("39999\n40000\n") and len(text) <= 100 * 1024
    assert big.locator(".clipped").is_visible()
    screenshot(b, "3-progress-and-big-output")

    # A reload shows the whole history.
    b.reload()
    b.wait_for_selector("#connection[data-state=live]")
    outputs = b.locator("#cells pre.output").all_text_contents()
    assert outputs[:2] == ["1\n2\n3\n", "red <script>window.__pwned=1</script>\nplain <b>b</b>\n"]
    assert outputs[2] == "progress 100%\n"
    assert outputs[3].endswith("39999\n40000\n") and len(outputs[3]) <= 100 * 1024
    assert b.locator("#cells .cell").count() == 5
    screenshot(b, "4-reviewer-reloaded")
    # The project page lists the session with its viewers now and its sandbox.
    b.goto(f"{daphne_server.url}/t/{personas.team.slug}/p/demo/")
    row = b.locator("#session-list tr:has-text('Pairing')")

    def only_a_views() -> bool:
        # B's socket closes as it leaves the session page: reload until that is counted.
        b.reload()
        return "1 viewing" in row.text_content()  # A still has the session open

    wait_until(only_a_views, timeout=20, interval=0.3, what="B's presence to end")
    assert "Running" in row.text_content()
    screenshot(b, "5-project-page")

    # The refused empty command is a 422, which Chromium logs as a failed resource.
    errors = [e for e in a.errors + b.errors if "status of 422" not in e]
    assert not errors


def test_reconnect_after_a_daphne_restart_and_cancel(
    browser, daphne_server, celery_worker, personas, notebook, screenshot, request
):
    a = open_page(browser, daphne_server, personas.member, notebook)
    b = open_page(browser, daphne_server, personas.owner, notebook)
    run(a, "for i in $(seq 1 30); do echo line$i; sleep 0.1; done")
    wait_until(
        lambda: "line2" in (b.locator("#cells pre.output").last.text_content() or ""),
        timeout=60,
        what="the first lines",
    )
    # Daphne goes away mid-stream; the clients notice, and come back by themselves.
    daphne_server.process.stop()
    b.wait_for_selector("#connection[data-state=reconnecting]")
    screenshot(b, "1-reconnecting")
    restarted = start_test_daphne(daphne_server.port)
    request.addfinalizer(restarted.stop)
    b.wait_for_selector("#connection[data-state=live]", timeout=30_000)
    wait_until(lambda: last_cell_status(b) == "finished", timeout=60, what="the loop")
    expected = "".join(f"line{i}\n" for i in range(1, 31))
    assert b.locator("#cells pre.output").last.text_content() == expected
    a.wait_for_selector("#connection[data-state=live]", timeout=30_000)
    wait_until(lambda: last_cell_status(a) == "finished", timeout=30, what="A to catch up")
    assert a.locator("#cells pre.output").last.text_content() == expected

    # Autoscroll pauses while B reads further up, and offers a way back down.
    b.evaluate("window.scrollTo(0, 0)")
    b.wait_for_function("window.scrollY === 0")
    run(a, "seq 1 300")
    wait_until(lambda: b.locator("#cells .cell").count() == 2, what="the seq cell")
    wait_until(lambda: last_cell_status(b) == "finished", timeout=60, what="seq")
    b.wait_for_selector("#jump-latest:visible")
    assert b.evaluate("window.scrollY") == 0
    b.click("#jump-latest")
    b.wait_for_selector("#jump-latest", state="hidden")
    assert b.evaluate("window.scrollY") > 0

    # Cancel of a long sleep, from the page.
    run(a, "echo sleeping; sleep 100")
    wait_until(lambda: last_cell_status(a) == "running", timeout=60, what="sleep to run")
    a.wait_for_selector("#cells .cell:last-child pre.output:has-text('sleeping')")
    a.locator("#cells .cell").last.locator("button.cancel").click()
    wait_until(lambda: last_cell_status(b) == "cancelled", timeout=30, what="the cancel")
    screenshot(b, "2-cancelled")
    assert b.locator("#cells .cell").last.locator(".badge").first.text_content() == "Cancelled"

    # ↑ in the composer brings back earlier commands, newest first.
    a.focus("#composer-source")
    a.keyboard.press("ArrowUp")
    assert a.input_value("#composer-source") == "echo sleeping; sleep 100"
    a.keyboard.press("ArrowUp")
    assert a.input_value("#composer-source") == "seq 1 300"
    a.keyboard.press("ArrowDown")
    a.keyboard.press("ArrowDown")
    assert a.input_value("#composer-source") == ""
