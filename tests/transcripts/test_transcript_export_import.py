"""Export (JSONL, Markdown, HTML) and import of transcripts: lossless round trip, refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from agentide.events import log as event_log
from agentide.events import registry
from agentide.events.models import Event
from agentide.sessions import execution
from agentide.sessions.models import Cell, Session
from agentide.transcripts import exchange, services
from agentide.transcripts.format import TranscriptInvalid
from agentide.transcripts.models import Annotation, TranscriptImport

pytestmark = pytest.mark.django_db

AGENT_TYPES = {
    "agent.text", "agent.message", "agent.request", "agent.response", "agent.tool_call",
    "agent.command_started", "agent.output", "agent.command_finished", "agent.tool_result",
    "agent.compaction", "agent.error", "agent.turn_finished",
}  # fmt: skip
COMMENT_TYPES = {"annotation.added", "annotation.resolved"}


def export(session: Session) -> list[dict[str, Any]]:
    return [json.loads(line) for line in "".join(exchange.export_jsonl(session)).splitlines()]


def to_bytes(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def example_payload(event_type: registry.EventType) -> dict[str, Any]:
    """A payload of the shape the registry declares for ``event_type``."""
    examples: dict[type, Any] = {str: "two", int: 1, bool: True, dict: {"a": 1}, list: [1, None]}
    payload = {}
    for key, expected in event_type.payload.items():
        first = expected[0] if isinstance(expected, tuple) else expected
        payload[key] = examples[first]
    return payload


def test_export_then_import_is_lossless_for_every_event_type(
    personas: Any, project: Any, rich_session: Any
) -> None:
    present = set(Event.objects.filter(session=rich_session).values_list("type", flat=True))
    prompt = Cell.objects.get(session=rich_session, kind="prompt")
    for type_ in sorted(set(registry.TYPES) - present):
        cell = prompt if type_ in registry.AGENT_TYPES else None
        payload = example_payload(registry.TYPES[type_])
        event_log.append_event(rich_session.pk, type_, payload, cell=cell)
    rich_session.refresh_from_db()
    original = export(rich_session)
    header, events = original[0], original[1:]
    assert header["format"] == "agentide-transcript" and header["version"] == 1
    assert header["session"]["title"] == "Debugging prod"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = {e["type"] for e in events}
    assert types == set(registry.TYPES) and types >= AGENT_TYPES | COMMENT_TYPES
    # A name that is no user here survives the trip too.
    events[0]["actor"] = "alice-from-elsewhere"

    imported = exchange.import_jsonl(
        personas.membership(personas.member), project, to_bytes([header, *events])
    )

    again = export(imported)
    # Every event comes back as it was, flagged as imported; a second trip changes nothing.
    assert again[1:] == [{**e, "payload": {**e["payload"], "_imported": True}} for e in events]
    assert again[0]["session"]["title"] == "Debugging prod"
    assert again[0]["session"]["imported"] is True
    twice = exchange.import_jsonl(personas.membership(personas.member), project, to_bytes(again))
    assert export(twice)[1:] == again[1:]
    assert TranscriptImport.objects.get(session=imported).header == header
    assert imported.last_seq == len(events)
    # The notebook's rows follow the log: cells with their outcome and output.
    cells = {c.position: c for c in Cell.objects.filter(session=imported)}
    created = {e["cell"]: e["at"] for e in events if e["type"] == "cell.created"}
    assert {p: c.created_at.isoformat() for p, c in cells.items()} == created
    assert cells[2].status == Cell.Status.FAILED and cells[2].exit_code == 2
    assert "No such file" in cells[2].output
    assert cells[3].status == Cell.Status.CANCELLED
    comment = Annotation.objects.get(session=imported)
    assert comment.resolved and comment.author is None and comment.author_name == "reviewer"
    assert services.is_read_only(imported) and not services.is_read_only(rich_session)
    with pytest.raises(ValidationError, match="ended"):
        execution.submit_cell(personas.membership(personas.owner), imported, "shell", "ls")


def test_imports_refuse_bad_files_with_line_numbers(
    personas: Any, project: Any, rich_session: Any
) -> None:
    member = personas.membership(personas.member)
    lines = export(rich_session)
    good_header, first, second = lines[0], lines[1], lines[2]
    cases = {
        "version": (to_bytes([{**good_header, "version": 99}, first]), "line 1: unsupported"),
        "format": (to_bytes([{**good_header, "format": "x"}, first]), "line 1: the header"),
        "json": (to_bytes([good_header, first]) + b"{nope\n", "line 3: not valid JSON"),
        "gap": (to_bytes([good_header, first, {**second, "seq": 5}]), "line 3: seq must be 2"),
        "type": (to_bytes([good_header, {**first, "type": "DROP TABLE"}]), "line 2: type"),
        "unknown": (
            to_bytes([good_header, {**first, "type": "cell.exploded"}]),
            "line 2: 'cell.exploded' is not an event type",
        ),
        "typed": (
            to_bytes([good_header, {**first, "payload": {**first["payload"], "source": 5}}]),
            "line 2: cell.created's 'source' must be str",
        ),
        "shape": (
            to_bytes([good_header, first, {**second, "payload": {**second["payload"], "x": 1}}]),
            f"line 3: {second['type']} has no payload key 'x'",
        ),
        "time": (to_bytes([good_header, {**first, "at": "yesterday"}]), "line 2: at must"),
        "cell": (to_bytes([good_header, first, {**second, "cell": 9}]), "line 3: cell 9"),
        "nul": (to_bytes([good_header, {**first, "payload": {"source": "a\x00"}}]), "NUL"),
        "utf8": (to_bytes([good_header]) + b"\xff\xfe\n", "line 2: not valid UTF-8"),
        "empty": (b"", "empty"),
        "nan": (to_bytes([good_header]) + b'{"seq": 1, "x": NaN}\n', "line 2: not valid JSON"),
        "deep": (to_bytes([good_header]) + b"[" * 100_000 + b"\n", "line 2: not valid JSON"),
        "position": (
            to_bytes(
                [
                    good_header,
                    {**first, "cell": 10**9, "payload": {**first["payload"], "position": 10**9}},
                ]
            ),
            "line 2: a cell.created payload needs a new integer position",
        ),
        "status": (
            to_bytes(
                [
                    good_header,
                    first,
                    {**second, "type": "cell.finished", "payload": {"status": "x" * 50}},
                ]
            ),
            "line 3: a cell.finished status must be one of",
        ),
    }
    before = Session.objects.count(), Event.objects.count(), Cell.objects.count()
    for name, (data, message) in cases.items():
        with pytest.raises(TranscriptInvalid) as caught:
            exchange.import_jsonl(member, project, data)
        assert any(message in error for error in caught.value.errors), (name, caught.value)
    assert (Session.objects.count(), Event.objects.count(), Cell.objects.count()) == before


def test_out_of_range_numbers_in_payloads_are_kept_in_the_log_only(
    personas: Any, project: Any, rich_session: Any
) -> None:
    lines = export(rich_session)
    for line in lines[1:]:
        if line["type"] == "cell.finished":
            line["payload"].update(exit_code=10**12, duration_ms=-5, output_chars=10**30)
        if line["type"] == "annotation.added":
            line["payload"]["target_seq"] = 10**30
    imported = exchange.import_jsonl(personas.membership(personas.member), project, to_bytes(lines))
    cell = Cell.objects.get(session=imported, position=2)
    assert (cell.exit_code, cell.duration_ms) == (None, None)
    assert export(imported)[1:] == [
        {**line, "payload": {**line["payload"], "_imported": True}} for line in lines[1:]
    ]


def test_imports_have_size_limits(personas: Any, project: Any, settings: Any) -> None:
    settings.TRANSCRIPT_IMPORT_MAX_BYTES = 2048
    with pytest.raises(TranscriptInvalid, match="limited to 2048 bytes"):
        exchange.import_jsonl(personas.membership(personas.member), project, b"x" * 4096)


def test_reviewers_cannot_import(personas: Any, project: Any, rich_session: Any) -> None:
    data = "".join(exchange.export_jsonl(rich_session)).encode()
    with pytest.raises(PermissionDenied):
        exchange.import_jsonl(personas.membership(personas.reviewer), project, data)


def test_the_import_page_reports_bad_lines_and_imports_good_files(
    client: Any, personas: Any, project: Any, rich_session: Any
) -> None:
    url = reverse("transcript_import", args=["acme"])
    data = "".join(exchange.export_jsonl(rich_session)).encode()
    client.force_login(personas.reviewer)
    assert client.get(url).status_code == 403
    client.force_login(personas.outsider)
    assert client.get(url).status_code == 404
    client.force_login(personas.member)
    assert client.get(url).status_code == 200
    bad = data + b'{"seq": "x"}\n'
    response = client.post(url, {"project": project.pk, "file": SimpleUploadedFile("t.jsonl", bad)})
    assert response.status_code == 422
    assert "line " in response.content.decode()
    count = Session.objects.count()
    response = client.post(
        url,
        {
            "project": project.pk,
            "title": "Review copy",
            "file": SimpleUploadedFile("t.jsonl", data),
        },
    )
    assert response.status_code == 302
    assert Session.objects.count() == count + 1
    imported = Session.objects.get(title="Review copy", imported=True)
    assert response["Location"] == reverse("transcript_detail", args=[imported.pk])


@pytest.mark.parametrize("who", ["owner", "member", "reviewer"])
def test_downloads(client: Any, personas: Any, rich_session: Any, who: str) -> None:
    client.force_login(getattr(personas, who))
    url = reverse("transcript_export", args=[rich_session.pk, "jsonl"])
    response = client.get(url)
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    body = b"".join(response.streaming_content).decode()
    assert json.loads(body.splitlines()[0])["format"] == "agentide-transcript"

    md = client.get(reverse("transcript_export", args=[rich_session.pk, "md"]))
    text = md.content.decode()
    assert md["Content-Type"].startswith("text/markdown")
    assert "# Debugging prod" in text and "$ ls /nope" in text and "exit 2" in text
    assert "ls: cannot access '/nope': No such file or directory" in text
    assert "<script>alert(1)</script>\n```" in text and "\x1b[" not in text  # plain text
    assert "Why was /nope expected?" in text

    html = client.get(reverse("transcript_export", args=[rich_session.pk, "html"]))
    page = html.content.decode()
    assert "<style>" in page and ".tr-cell" in page  # self-contained
    assert "<script" not in page and "<link" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "style-src 'unsafe-inline'" in html["Content-Security-Policy"]
    assert "script-src" not in html["Content-Security-Policy"]
    assert 'action="' not in page  # no forms in a file
    assert (
        client.get(reverse("transcript_export", args=[rich_session.pk, "pdf"])).status_code == 404
    )
