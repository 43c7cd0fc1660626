"""The shared terminal in transcripts: the page, the Markdown / HTML / JSONL exports and an
import of an export, with the events the terminal pump writes (sessions/terminals.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.urls import reverse

from agentide.events import log as event_log
from agentide.events import registry
from agentide.events.models import Event
from agentide.sessions import execution
from agentide.sessions import services as notebook
from agentide.sessions.models import Cell, Session
from agentide.transcripts import exchange, view
from tests.transcripts.conftest import finish

pytestmark = pytest.mark.django_db

PROMPT = "member@sandbox:/workspace$ "


def shell_cell(member: Any, session: Session, command: str, output: str) -> Cell:
    cell = execution.submit_cell(member, session, "shell", command)
    assert execution.claim_next_cell(session.pk, worker="t") is not None
    finish(cell, status=Cell.Status.FINISHED, exit_code=0, output=output)
    return cell


@pytest.fixture
def terminal_session(personas: Any, project: Any, no_tasks: Any) -> Session:
    """A shell cell, then a terminal session (as the pump records it), then another cell."""
    member = personas.membership(personas.member)
    session = notebook.create_session(member, project, "Terminal work")
    shell_cell(member, session, "echo before", "before\n")
    append = event_log.append_event
    append(session.pk, registry.TERMINAL_OPENED,
           {"terminal_id": "term-1-abc", "rows": 24, "cols": 80})
    append(session.pk, registry.TERMINAL_OUTPUT, {"text": PROMPT})
    append(session.pk, registry.TERMINAL_OUTPUT,
           {"text": "echo '<b>hi</b>'\r\n\x1b[32m<b>hi</b>\x1b[0m\r\n" + PROMPT})
    append(session.pk, registry.TERMINAL_INPUT, {"line": PROMPT + "echo '<b>hi</b>'"},
           actor=personas.owner)
    append(session.pk, registry.TERMINAL_OUTPUT, {"text": "ls ``odd``\r\nx\r\n" + PROMPT})
    append(session.pk, registry.TERMINAL_INPUT, {"line": PROMPT + "ls ``odd``"},
           actor=personas.member)
    append(session.pk, registry.TERMINAL_CLOSED,
           {"terminal_id": "term-1-abc", "exit_code": None, "how": "closed"},
           actor=personas.member)
    shell_cell(member, session, "echo after", "after\n")
    session.refresh_from_db()
    return session


def page(client: Any, user: Any, session: Session, **params: str) -> str:
    client.force_login(user)
    response = client.get(reverse("transcript_detail", args=[session.pk]), params)
    assert response.status_code == 200
    return response.content.decode()


def terminal_seqs(session: Session) -> list[int]:
    return list(Event.objects.filter(session=session, type__startswith="terminal.")
                .order_by("seq").values_list("seq", flat=True))


def test_the_page_shows_the_terminal_between_the_cells_in_log_order(
    client: Any, personas: Any, terminal_session: Session
) -> None:
    body = page(client, personas.reviewer, terminal_session)
    anchors = [int(n) for n in re.findall(r'id="e-(\d+)"', body)]
    assert anchors == sorted(anchors)
    assert set(anchors) == set(
        Event.objects.filter(session=terminal_session).values_list("seq", flat=True))
    section = body[body.index('class="tr-event tr-terminal"'):]
    section = section[:section.index("</section>")]
    assert [int(n) for n in re.findall(r'id="e-(\d+)"', section)] == terminal_seqs(
        terminal_session)
    assert body.index("echo before") < body.index("tr-terminal") < body.index("echo after")
    # Output through the ANSI renderer, escaped; lines typed with who typed them.
    assert '<span class="a-f2">&lt;b&gt;hi&lt;/b&gt;</span>' in section  # green
    assert "<b>hi</b>" not in section and "\x1b" not in section
    assert "terminal opened" in section and "24x80" in section
    typed = re.findall(r'typed in the terminal</span>\s*<span class="tr-actor">(\w+)</span>'
                       r'.*?<code class="tr-cmd">([^<]*)</code>', section, re.S)
    assert typed == [(personas.owner.username, PROMPT + "echo &#x27;&lt;b&gt;hi&lt;/b&gt;&#x27;"),
                     (personas.member.username, PROMPT + "ls ``odd``")]
    assert "terminal closed" in section
    assert "bytes omitted" not in section
    assert "tr-terminal" in page(client, personas.reviewer, terminal_session, show="commands")


def test_long_terminal_output_is_capped_with_what_was_omitted(
    client: Any, personas: Any, project: Any, settings: Any
) -> None:
    settings.TRANSCRIPT_OUTPUT_CHARS = 1024
    session = notebook.create_session(personas.membership(personas.member), project, "Yes")
    event_log.append_event(
        session.pk, registry.TERMINAL_OPENED, {"terminal_id": "term-1-abc", "rows": 24, "cols": 80}
    )
    for _ in range(3):
        event_log.append_event(session.pk, registry.TERMINAL_OUTPUT, {"text": "y\r\n" * 500})
    event_log.append_event(session.pk, registry.TERMINAL_OUTPUT, {"text": "é" * 10})
    body = page(client, personas.member, session)
    # 4 510 characters, 1 024 shown: 3 476 "y\r\n" bytes left out and 10 "é" of two bytes.
    assert "... 3496 bytes omitted" in body
    assert body.count("y\n") + body.count("y\r\n") <= 1024 // 3 + 1
    for seq in terminal_seqs(session):
        assert f'id="e-{seq}"' in body
    markdown = exchange.export_markdown(view.transcript_view(session))
    assert "*... 3496 bytes of terminal output omitted*" in markdown


def test_the_markdown_export_has_plain_output_and_who_typed_what(
    client: Any, personas: Any, terminal_session: Session
) -> None:
    client.force_login(personas.reviewer)
    response = client.get(reverse("transcript_export", args=[terminal_session.pk, "md"]))
    text = response.content.decode()
    assert "\x1b" not in text and "\r" not in text
    assert "### Terminal opened (24x80)" in text
    assert f"{personas.owner.username} typed (#" in text
    assert f"`` {PROMPT}echo '<b>hi</b>' ``" not in text  # one backtick run is enough there
    assert f"` {PROMPT}echo '<b>hi</b>' `" in text
    assert f"``` {PROMPT}ls ``odd`` ```" in text  # longer than the run inside
    assert "echo '<b>hi</b>'\n<b>hi</b>\n" in text
    assert f"*Terminal closed by {personas.member.username} (closed)" in text
    assert text.index("$ echo before") < text.index("Terminal opened") < text.index("$ echo after")


def test_the_html_export_renders_the_terminal(
    client: Any, personas: Any, terminal_session: Session
) -> None:
    client.force_login(personas.member)
    html = client.get(reverse("transcript_export", args=[terminal_session.pk, "html"]))
    body = html.content.decode()
    assert "tr-terminal" in body and "&lt;b&gt;hi&lt;/b&gt;" in body and "\x1b" not in body
    assert "<b>hi</b>" not in body
    for seq in terminal_seqs(terminal_session):
        assert f'id="e-{seq}"' in body


def test_an_exported_terminal_session_imports_and_renders_the_same(
    client: Any, personas: Any, project: Any, terminal_session: Session
) -> None:
    exported = "".join(exchange.export_jsonl(terminal_session))
    lines = [json.loads(line) for line in exported.splitlines()[1:]]
    assert [line["type"] for line in lines if line["type"].startswith("terminal.")] == [
        "terminal.opened", "terminal.output", "terminal.output", "terminal.input",
        "terminal.output", "terminal.input", "terminal.closed"]
    imported = exchange.import_jsonl(
        personas.membership(personas.member), project, exported.encode())
    again = [json.loads(line) for line in "".join(exchange.export_jsonl(imported)).splitlines()]
    assert again[1:] == [{**e, "payload": {**e["payload"], "_imported": True}} for e in lines]
    body = page(client, personas.reviewer, imported)
    section = body[body.index('class="tr-event tr-terminal"'):]
    section = section[:section.index("</section>")]
    assert re.findall(r'class="tr-actor">(\w+)</span>', section) == [
        personas.owner.username, personas.member.username, personas.member.username]
    assert "imported" in section
    markdown = exchange.export_markdown(view.transcript_view(imported))
    assert f"{personas.owner.username} (imported) typed (#" in markdown
