"""Figures measured in Debian's Chromium, on the page people use (``bench/stack.py``'s stack).

- the composer's round trip: type ``echo <token>`` in the composer, click *Run* (the form's
  htmx POST to ``cell_create``, exactly what the page does), the token visible in the cell's
  output; next to a raw ``docker exec`` (Engine API and CLI) and the runner's own ``echo``
  (the sandbox backend's kept exec socket) in the same container, interleaved;
- a long session's page: server time and size of the GET, and Chromium's load of it until the
  page's "Live" indicator shows.

Imported by ``bench/run.py`` after Django is configured. Playwright's sync API runs its own
event loop in this thread while it is open, so each figure opens and closes Chromium.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
import urllib.request
import uuid
from typing import Any

import docker

from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.backends.docker import SANDBOX_UID
from agentide.sandboxes.models import Sandbox
from agentide.sessions.models import Session
from agentide.transcripts import exchange
from bench.report import Row
from bench.stack import Fixture, Stack, new_session, submit, wait_cell_done
from tests.support import chromium, logged_in_page, open_page

LIVE = "#connection[data-state=live]"
RUN = "#composer button[type=submit]"

# Armed before each click: resolves with the milliseconds from the click on Run (capture
# phase, before htmx sees it) to the DOM mutation that put ``token`` into a cell's output.
ARM = """(token) => {
  window.__roundTrip = new Promise((resolve) => {
    let clicked = null;
    const cells = document.getElementById('cells');
    const shown = () => Array.prototype.some.call(
      cells.querySelectorAll('pre.output'), (pre) => pre.textContent.includes(token));
    const observer = new MutationObserver(() => {
      if (clicked !== null && shown()) {
        observer.disconnect();
        resolve(performance.now() - clicked);
      }
    });
    observer.observe(cells, {subtree: true, childList: true, characterData: true});
    document.querySelector('#composer button[type=submit]').addEventListener(
      'click', () => { clicked = performance.now(); }, {capture: true, once: true});
  });
}"""


def _noop(*args: Any) -> None:
    return None


# --- the composer's round trip ---------------------------------------------------------------


def composer_round_trip(stack: Stack, fixture: Fixture, n: int, warmup: int) -> list[Row]:
    session = new_session(fixture, "composer round trip")
    wait_cell_done(submit(fixture, session, "echo warm").pk)
    sandbox = Sandbox.objects.get(session=session)
    container = sandbox.container_id
    api = docker.from_env().api
    backend = sandboxes.get_backend()

    def raw_api() -> float:
        t = time.perf_counter()
        exec_id = api.exec_create(container, ["echo", "hi"], user=SANDBOX_UID)["Id"]
        out = api.exec_start(exec_id)
        api.exec_inspect(exec_id)
        assert out == b"hi\n", out
        return (time.perf_counter() - t) * 1000

    def raw_cli() -> float:
        t = time.perf_counter()
        out = subprocess.run(["docker", "exec", "-u", SANDBOX_UID, container, "echo", "hi"],
                             capture_output=True, timeout=30).stdout
        assert out == b"hi\n", out
        return (time.perf_counter() - t) * 1000

    def runner() -> float:
        t = time.perf_counter()
        result = backend.exec(sandbox.handle, "echo hi", command_id=uuid.uuid4().hex,
                              timeout_s=30, on_output=_noop)
        assert result.exit_code == 0, result
        return (time.perf_counter() - t) * 1000

    via_page: list[float] = []
    via_api: list[float] = []
    via_cli: list[float] = []
    via_runner: list[float] = []
    with chromium() as browser:
        page = open_page(browser, stack, fixture.user, session)
        cells = page.locator("#cells .cell")
        for i in range(warmup + n):
            token = f"tok{i}x{uuid.uuid4().hex[:8]}"
            page.fill("#composer-source", f"echo {token}")
            page.evaluate(ARM, token)
            page.click(RUN)
            page_ms = float(page.evaluate("window.__roundTrip"))
            cell = cells.last
            cell.locator("pre.output", has_text=token).wait_for(state="visible")
            cell.locator(".cell-state[data-status=finished]").wait_for(state="attached",
                                                                       timeout=60_000)
            api_ms, cli_ms, runner_ms = raw_api(), raw_cli(), runner()
            if i >= warmup:
                via_page.append(page_ms)
                via_api.append(api_ms)
                via_cli.append(cli_ms)
                via_runner.append(runner_ms)
        errors = list(page.errors)
        page.context.close()
    ratio = statistics.median(via_page) / statistics.median(via_cli)
    return [
        Row("Chromium: click Run (composer POST) -> output visible", samples=via_page,
            target="p50 <= 40 ms",
            note=f"page errors: {len(errors)}; after {warmup} warm-up cells"),
        Row("runner's own echo (backend exec socket, same container)", samples=via_runner),
        Row("raw docker exec, Engine API (create+start+inspect)", samples=via_api),
        Row("raw docker exec, CLI (`docker exec`)", samples=via_cli),
        Row("ratio Chromium round trip / docker exec CLI (medians)", value=f"{ratio:.2f}x"),
    ]


# --- a long session's page -------------------------------------------------------------------


def long_session(fixture: Fixture, template: Session, cells: int) -> Session:
    """A session of ``cells`` cells, imported (the product's transcript import) from the
    export of ``template``'s real cells repeated: real payloads, written in one go."""
    groups: dict[int, list[dict[str, Any]]] = {}
    lines = list(exchange.export_jsonl(template))
    for line in lines[1:]:
        event = json.loads(line)
        if event.get("cell") is not None:
            groups.setdefault(int(event["cell"]), []).append(event)
    real = [g for g in groups.values() if g[0]["type"] == "cell.created"]
    assert real, "the template session has no cells"
    out = [lines[0]]
    seq = 0
    for position in range(1, cells + 1):
        for event in real[(position - 1) % len(real)]:
            seq += 1
            payload = dict(event["payload"])
            if event["type"] == "cell.created":
                payload["position"] = position
            out.append(json.dumps({**event, "seq": seq, "cell": position,
                                   "payload": payload}) + "\n")
    data = "".join(out).encode()
    return exchange.import_jsonl(fixture.membership, fixture.project, data,
                                    title=f"{cells} cells")


# Cells of the template whose export is repeated into the long session: short and longer
# output, colours, a failure.
TEMPLATE = [
    "echo hello",
    "seq 1 20",
    "ls -la /etc | head -30",
    "printf '\\033[32mgreen\\033[0m plain\\n'",
    "cat /nonexistent",
]


def page_load(stack: Stack, fixture: Fixture, cells: int, repeats: int) -> list[Row]:
    template = new_session(fixture, "long session template")
    for source in TEMPLATE:
        wait_cell_done(submit(fixture, template, source).pk)
    t = time.perf_counter()
    session = long_session(fixture, template, cells)
    made_s = time.perf_counter() - t
    url = f"{stack.url}/s/{session.pk}/"
    server: list[float] = []
    size = 0
    for _ in range(repeats):
        request = urllib.request.Request(url, headers={"Cookie": fixture.cookie})
        t = time.perf_counter()
        with urllib.request.urlopen(request, timeout=300) as response:
            body = response.read()
        server.append((time.perf_counter() - t) * 1000)
        size = len(body)
    loads: list[float] = []
    with chromium() as browser:
        for _ in range(repeats):
            page = logged_in_page(browser, stack.url, fixture.user)
            t = time.perf_counter()
            page.goto(url, timeout=300_000)
            page.locator(LIVE).wait_for(state="visible", timeout=300_000)
            loads.append((time.perf_counter() - t) * 1000)
            page.context.close()
    events = Session.objects.filter(pk=session.pk).values_list("last_seq", flat=True).get()
    return [
        Row(f"{cells}-cell session: GET the page (server time, to the last byte)",
            samples=server, target="<= 150 ms",
            note=f"{size / 1024:.0f} KiB of HTML; {events} events (imported in {made_s:.1f} s)"),
        Row(f"{cells}-cell session: Chromium load -> \"Live\" visible", samples=loads,
            target="<= 800 ms", note="a new tab each time"),
    ]
