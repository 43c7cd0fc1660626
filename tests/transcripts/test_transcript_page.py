"""The transcript page: every event in order, escaping, filters, personas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from agentide.events.models import Event

pytestmark = pytest.mark.django_db


def page(client: Any, user: Any, session: Any, **params: str) -> str:
    client.force_login(user)
    response = client.get(reverse("transcript_detail", args=[session.pk]), params)
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.parametrize("who", ["owner", "admin", "member", "reviewer"])
def test_the_team_reads_every_event_in_order(
    client: Any, personas: Any, rich_session: Any, who: str
) -> None:
    body = page(client, getattr(personas, who), rich_session)
    anchors = [int(n) for n in re.findall(r'id="e-(\d+)"', body)]
    seqs = list(Event.objects.filter(session=rich_session).values_list("seq", flat=True))
    assert sorted(anchors) == seqs, "every event exactly once"
    # Blocks are ordered by their first event, and their events by seq; comments show
    # under the event they are on, and an agent's commands nest under its tool call.
    nested_types = [
        "annotation.added",
        "annotation.resolved",
        "agent.command_started",
        "agent.output",
        "agent.command_finished",
        "agent.tool_result",
    ]
    nested = set(
        Event.objects.filter(session=rich_session, type__in=nested_types).values_list(
            "seq", flat=True
        )
    )
    plain = [a for a in anchors if a not in nested]
    assert plain == sorted(plain)
    call = Event.objects.get(session=rich_session, type="agent.tool_call").seq
    command = Event.objects.get(session=rich_session, type="agent.command_started").seq
    result = Event.objects.get(session=rich_session, type="agent.tool_result").seq
    assert anchors.index(call) < anchors.index(command) < anchors.index(result)


def test_it_escapes_commands_output_notes_and_answers(
    client: Any, personas: Any, rich_session: Any
) -> None:
    body = page(client, personas.reviewer, rich_session)
    assert "<script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "onerror" not in body
    assert "<strong>fix</strong>" in body  # notes are Markdown
    assert "<code>/nope</code> does not exist." in body  # answers are Markdown
    assert "&lt;i&gt;hm&lt;/i&gt;" in body  # comments are plain text
    assert '<span class="a-f2">' in body  # ANSI colours as classes


def test_it_shows_exit_codes_durations_model_tokens_and_cost(
    client: Any, personas: Any, rich_session: Any
) -> None:
    body = page(client, personas.member, rich_session)
    assert "exit 2" in body
    assert "test -e /nope; echo $?" in body
    assert "fake-model" in body
    assert "200 in / 60 out tokens" in body
    assert "$0.000300" in body
    assert "resolved" in body


@pytest.mark.parametrize(
    ("show", "present", "absent"),
    [
        ("commands", ["ls /nope", "sleep 100", "test -e /nope; echo $?"], ["<h2>Plan"]),
        ("agent", ["Why does ls fail?"], ["ls /nope</pre>", "sleep 100"]),
        ("failures", ["ls /nope", "sleep 100", "worker lost"], ["&lt;script&gt;alert(1)"]),
    ],
)
def test_filters(
    client: Any, personas: Any, rich_session: Any, show: str, present: list[str], absent: list[str]
) -> None:
    body = page(client, personas.reviewer, rich_session, show=show)
    for text in present:
        assert text in body, text
    for text in absent:
        assert text not in body, text
    assert 'aria-current="true">' in body
    assert f'class="transcript-blocks show-{show}"' in body


def test_outsiders_and_strangers_get_404(client: Any, personas: Any, rich_session: Any) -> None:
    client.force_login(personas.outsider)
    for name, args in [
        ("transcript_detail", [rich_session.pk]),
        ("transcript_export", [rich_session.pk, "jsonl"]),
        ("transcript_export", [rich_session.pk, "md"]),
        ("transcript_export", [rich_session.pk, "html"]),
    ]:
        assert client.get(reverse(name, args=args)).status_code == 404, name
    response = client.post(
        reverse("annotation_create", args=[rich_session.pk]), {"seq": 1, "body": "hi"}
    )
    assert response.status_code == 404
    assert client.get(reverse("transcript_search", args=["acme"]), {"q": "ls"}).status_code == 404
    client.logout()
    response = client.get(reverse("transcript_detail", args=[rich_session.pk]))
    assert response.status_code == 302


def test_the_page_keeps_the_strict_csp_and_a_print_stylesheet(
    client: Any, personas: Any, rich_session: Any
) -> None:
    client.force_login(personas.reviewer)
    response = client.get(reverse("transcript_detail", args=[rich_session.pk]))
    assert "style-src 'self'" in response["Content-Security-Policy"]
    body = response.content.decode()
    assert "<style" not in body and " style=" not in body
    assert "<script>" not in body
    from django.contrib.staticfiles import finders

    css = Path(finders.find("css/transcripts.css")).read_text()
    assert "@media print" in css


def test_the_page_polls_for_new_events(client: Any, personas: Any, rich_session: Any) -> None:
    from agentide.sessions.services import append_event

    body = page(client, personas.reviewer, rich_session)
    news = reverse("transcript_news", args=[rich_session.pk])
    assert f'hx-get="{news}?seq={rich_session.last_seq}"' in body
    quiet = client.get(news, {"seq": rich_session.last_seq}).content.decode()
    assert "new event" not in quiet and 'hx-trigger="every 10s"' in quiet
    append_event(rich_session.pk, "sandbox.state", {"state": "stopped"})
    append_event(rich_session.pk, "sandbox.state", {"state": "running"})
    assert "2 new events" in client.get(news, {"seq": rich_session.last_seq}).content.decode()
    client.force_login(personas.outsider)
    assert client.get(news, {"seq": 1}).status_code == 404


def test_long_output_is_capped_with_its_full_size_and_a_link(
    client: Any, personas: Any, project: Any, no_tasks: Any, settings: Any
) -> None:
    from agentide.sessions import execution
    from agentide.sessions import services as notebook
    from agentide.sessions.models import Cell
    from tests.transcripts.conftest import finish

    settings.TRANSCRIPT_OUTPUT_CHARS = 1024
    member = personas.membership(personas.member)
    session = notebook.create_session(member, project, "Long")
    cell = execution.submit_cell(member, session, "shell", "seq 1000")
    execution.claim_next_cell(session.pk, worker="t")
    finish(cell, status=Cell.Status.FINISHED, exit_code=0, output="x" * 1500 + "y" * 1500)
    body = page(client, personas.reviewer, session)
    assert "x" * 1024 in body and "x" * 1025 not in body and "y" * 10 not in body
    assert "Showing the first 1.0 KiB of 2.9 KiB." in body
    assert reverse("cell_output", args=[session.pk, cell.pk]) in body
    assert "2.9 KiB of output" in body
    outputs = Event.objects.filter(session=session, type="cell.output").values_list(
        "seq", flat=True
    )
    for seq in outputs:
        assert f'id="e-{seq}"' in body
