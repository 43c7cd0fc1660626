"""The reviewer's flow in Debian's Chromium against Daphne: open the transcript, filter,
comment, resolve, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from agentide.transcripts.models import Annotation

pytestmark = pytest.mark.browser


def open_as(browser: Any, server: Any, user: Any, path: str) -> Any:
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": server.url}]
    )
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + path)
    return page


def test_a_reviewer_reads_filters_comments_and_exports(
    browser: Any,
    daphne_server: Any,
    personas: Any,
    rich_session: Any,
    screenshot: Any,
    tmp_path: Path,
) -> None:
    page = open_as(browser, daphne_server, personas.reviewer, f"/s/{rich_session.pk}/transcript/")
    page.wait_for_selector("#transcript")
    assert page.locator("h1").inner_text().startswith("Debugging prod")
    assert page.locator(".tr-cell").count() == 5
    screenshot(page, "1-transcript")

    page.emulate_media(media="print")
    assert not page.locator(".tr-toolbar").is_visible()
    assert not page.locator(".topbar").is_visible()
    assert not page.locator("a.comment-link").first.is_visible()
    assert page.locator(".tr-cell").first.is_visible()
    screenshot(page, "1a-print")
    page.emulate_media(media="screen")

    page.click("text=Commands")
    page.wait_for_url("**show=commands")
    assert page.locator(".tr-command").first.is_visible()
    assert page.locator(".tr-message").count() == 2
    assert not page.locator(".tr-message").first.is_visible()
    screenshot(page, "1b-commands")

    page.click("text=Failures")
    page.wait_for_url("**show=failures")
    shown = page.locator(".tr-cell .tr-source").all_inner_texts()
    assert shown == ["ls /nope", "sleep 100"]
    assert page.locator("text=worker lost").count() == 1
    screenshot(page, "2-failures")

    # Comment on the failed command's "finished" event, from its own Comment link.
    row = page.locator(".tr-cell.tr-failed").first.locator(".tr-row.tr-cellfinished")
    row.locator("a.comment-link").click()
    page.wait_for_selector("#comment-form")
    page.fill("#comment-body", "Exit 2: the path was never created <b>upstream</b>.")
    screenshot(page, "3-comment-form")
    page.click("#comment-form button[type=submit]")
    comment = page.locator(".tr-comment", has_text="never created")
    comment.wait_for()
    assert "<b>upstream</b>" in comment.inner_text()  # shown as text, not markup
    assert comment.locator(".badge").inner_text() == "open"
    comment.locator("button", has_text="Resolve").click()
    page.locator(".tr-comment.resolved", has_text="never created").wait_for()
    screenshot(page, "4-resolved")
    mine = Annotation.objects.get(body__startswith="Exit 2")
    assert mine.author == personas.reviewer and mine.resolved
    assert page.url.endswith(f"#e-{mine.target_seq}")

    with page.expect_download() as download_info:
        page.click("text=JSONL")
    text = Path(download_info.value.path()).read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["format"] == "agentide-transcript"
    assert any(e["type"] == "annotation.added" and e["actor"] == "reviewer" for e in lines[1:])
    with page.expect_download() as download_info:
        page.click("text=HTML")
    assert download_info.value.suggested_filename.endswith(".html")
    exported = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(exported)
    assert "never created" in exported.read_text(encoding="utf-8")

    # The downloaded file stands alone: it opens without the server and is styled.
    offline = page.context.new_page()
    offline.goto(exported.as_uri())
    assert offline.locator(".tr-cell").count() == 5
    color = offline.locator(".tr-output").first.evaluate("e => getComputedStyle(e).color")
    assert color == "rgb(226, 232, 240)"
    screenshot(offline, "5-exported-html")
    assert page.errors == []
