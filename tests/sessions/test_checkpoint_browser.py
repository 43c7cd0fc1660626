"""What an agent turn changed in /workspace, in Debian's Chromium: the cell's "Files changed"
summary and its diff, restore from the cell's menu and its undo, and a reviewer who sees the
diff but no restore; against Daphne, a real Celery worker, Docker and the fake model."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import services as sandboxes
from agentide.sessions.models import Cell
from tests.agents.fake_openai import API_KEY, MODEL, FakeOpenAI, Step
from tests.support import open_page, wait_until

pytestmark = pytest.mark.browser

# The workspace before the turn: a text file the agent edits, one it deletes, one it leaves
# alone, and a binary file it rewrites.
SETUP = (
    "mkdir -p src && printf 'one\\ntwo\\nthree\\n' > src/keep.txt && printf 'bye\\n' > old.txt"
    " && printf 'same\\n' > untouched.txt && head -c 3000 /dev/urandom > blob.bin"
    " && chmod 755 untouched.txt"
)
TURN = (
    "cd /workspace && sed -i 's|two|TWO <b>bold</b>|' src/keep.txt && rm old.txt"
    " && printf 'hello\\n' > src/new.txt && head -c 1234 /dev/urandom > blob.bin"
)
# Every file under /workspace with its mode and hash, in order: "byte for byte".
LISTING = (
    "cd /workspace && find . -path ./.agentide -prune -o -type f -printf '%p %m\\n' | sort"
    " && find . -path ./.agentide -prune -o -type f -print0 | sort -z | xargs -0 sha256sum"
)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def agent_session(personas: Any, fake: FakeOpenAI) -> Iterator[Any]:
    from agentide.agents.models import ModelProvider
    from agentide.projects.models import Project
    from agentide.sessions.services import create_session

    project = Project.objects.create(team=personas.team, name="Lab", slug="lab")
    provider = ModelProvider(project=project, kind="responses", base_url=fake.url, model=MODEL)
    provider.set_api_key(API_KEY)
    provider.save()
    session = create_session(personas.membership(personas.member), project, "Files")
    yield session
    sandboxes.destroy_sandbox(session)


def listing(session: Any) -> str:
    out: list[bytes] = []
    result = sandboxes.run_command(
        session, LISTING, command_id=uuid.uuid4().hex, admission=sandbox_admission(session),
        on_output=lambda stream, data: out.append(data),
    )
    assert result.exit_code == 0
    return b"".join(out).decode()


def run(page: Any, kind: str, source: str) -> None:
    page.check(f"input[name=kind][value={kind}]")
    page.fill("#composer-source", source)
    page.press("#composer-source", "Control+Enter")


def wait_finished(session: Any, count: int) -> list[Cell]:
    """The session's cells once there are ``count`` and all are done."""

    def done() -> list[Cell] | None:
        cells = list(Cell.objects.filter(session=session).order_by("position"))
        return cells if len(cells) == count and all(c.is_done for c in cells) else None

    return wait_until(done, timeout=120, what=f"{count} cells to finish")  # type: ignore[no-any-return]


def test_a_turns_file_changes_show_restore_and_undo(
    browser: Any, daphne_server: Any, celery_worker: Any, personas: Any, agent_session: Any,
    fake: FakeOpenAI, screenshot: Any,
) -> None:
    fake.add(Step(text="Editing.", calls=[{"commands": [TURN]}]), Step(text="Done."))
    member = open_page(browser, daphne_server, personas.member, agent_session)
    member.on("dialog", lambda dialog: dialog.accept())
    reviewer = open_page(browser, daphne_server, personas.reviewer, agent_session)

    run(member, "shell", SETUP)
    wait_finished(agent_session, 1)
    before_turn = listing(agent_session)
    run(member, "prompt", "Edit the files.")
    _, prompt = wait_finished(agent_session, 2)
    after_turn = listing(agent_session)
    assert after_turn != before_turn

    # The summary arrives live at both viewers, with exactly the turn's changes.
    for page in (member, reviewer):
        summary = page.locator(f"#cell-{prompt.pk}-files summary")
        summary.wait_for(timeout=60_000)
        assert " ".join(summary.text_content().split()) == "Files changed: +1 \u22121 ~2"
    reviewer.locator(f"#cell-{prompt.pk}-files summary").click()
    diff = reviewer.locator(f"#cell-{prompt.pk}-diff")
    diff.wait_for()
    assert diff.locator(".diff-file.added code.path").all_text_contents() == ["src/new.txt"]
    assert diff.locator(".diff-file.removed code.path").all_text_contents() == ["old.txt"]
    assert diff.locator(".diff-file.changed code.path").all_text_contents() == [
        "blob.bin", "src/keep.txt"
    ]
    text = diff.locator(".diff-file.changed", has_text="src/keep.txt").locator("pre.diff-text")
    assert "-two" in text.text_content()
    assert "+TWO <b>bold</b>" in text.text_content()  # escaped: shown as text
    assert diff.locator("b").count() == 0
    binary = diff.locator(".diff-file.changed", has_text="blob.bin")
    assert "binary" in binary.text_content()
    assert "2.9 KiB → 1.2 KiB" in binary.text_content()  # 3000 -> 1234 bytes, and hashes
    # The reviewer has no restore control.
    assert reviewer.locator(".cell-menu:visible, button.restore:visible").count() == 0
    screenshot(reviewer, "1-reviewer-diff")

    # Restore from the prompt cell's menu: a restore cell runs, the files are as before.
    menu = member.locator(f"#cell-{prompt.pk} .cell-menu")
    menu.locator("summary").click()
    screenshot(member, "2-menu")
    menu.locator("button.restore").click()
    cells = wait_finished(agent_session, 3)
    restore = cells[-1]
    assert restore.kind == "restore" and restore.status == Cell.Status.FINISHED, restore.error
    assert listing(agent_session) == before_turn
    member.locator(f"#cell-{restore.pk} .restore-source").wait_for()
    assert "restored the files" in member.locator(f"#cell-{restore.pk} .cell-who").text_content()
    reviewer.locator(f"#cell-{restore.pk} .restore-source").wait_for()
    assert "(taken before cell #2)" in reviewer.locator(f"#cell-{restore.pk}").text_content()
    screenshot(reviewer, "3-restored")

    # Undo: the files as they were after the turn.
    undo = member.locator(f"#cell-{restore.pk} button.undo-restore")
    undo.wait_for(timeout=60_000)
    undo.click()
    cells = wait_finished(agent_session, 4)
    assert cells[-1].kind == "restore" and cells[-1].status == Cell.Status.FINISHED
    assert listing(agent_session) == after_turn
    assert reviewer.locator("button.undo-restore:visible").count() == 0

    # A reload renders the same from the database.
    reviewer.reload()
    reviewer.wait_for_selector("#connection[data-state=live]")
    summary = reviewer.locator(f"#cell-{prompt.pk}-files summary")
    assert " ".join(summary.text_content().split()) == "Files changed: +1 \u22121 ~2"
    assert reviewer.locator(".cell-menu, button.undo-restore").count() == 0
    screenshot(reviewer, "4-reviewer-after-undo")

    # The transcript shows the reviewer the same diff.
    reviewer.goto(f"{daphne_server.url}/s/{agent_session.pk}/transcript/")
    files = reviewer.locator(f"#cell-{prompt.pk}-files")
    assert " ".join(files.locator("summary").text_content().split()) == (
        "Files changed: +1 \u22121 ~2"
    )
    files.locator("summary").click()
    diff = reviewer.locator(f"#cell-{prompt.pk}-diff")
    diff.wait_for()
    assert diff.locator("code.path").all_text_contents() == [
        "src/new.txt", "old.txt", "blob.bin", "src/keep.txt"
    ]
    assert reviewer.locator("button.restore, button.undo-restore").count() == 0
    screenshot(reviewer, "5-transcript-diff")
    assert not member.errors + reviewer.errors


def test_the_project_settings_page_edits_the_checkpoint_settings(
    browser: Any, daphne_server: Any, personas: Any, agent_session: Any, screenshot: Any,
) -> None:
    from tests.support import logged_in_page

    page = logged_in_page(browser, daphne_server.url, personas.owner)
    page.goto(f"{daphne_server.url}/t/acme/p/lab/settings/")
    fieldset = page.locator("#checkpoint-settings")
    assert ".venv/" in fieldset.locator("textarea").input_value()
    fieldset.locator("textarea").fill("build/\n.venv/\n")
    fieldset.get_by_label("Checkpoints kept (last N)").fill("7")
    page.get_by_role("button", name="Save settings").click()
    page.locator("#checkpoint-summary", has_text="the last 7 of each session").wait_for()
    assert "<code>build/</code>" in page.locator("#checkpoint-summary").inner_html()
    screenshot(page, "settings")
    assert not page.errors
