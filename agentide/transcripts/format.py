"""The portable transcript format: versioned, provider-neutral JSONL (docs/transcript-format.md).

Pure functions, no database: ``event_line`` / ``header_line`` write one line each, and
``parse`` reads a whole file into a ``ParsedTranscript`` or raises ``TranscriptInvalid``
listing every problem with its line number. Every event's type must be one the log declares
(``agentide.events.registry``) and its payload must have that type's shape.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from agentide.events import registry

FORMAT = "agentide-transcript"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
# Errors reported at most; a file this broken needs fixing at its source anyway.
MAX_REPORTED_ERRORS = 20
TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
CELL_KINDS = ("shell", "prompt", "note", "restore")
CELL_STATUSES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
MAX_POSITION = 1_000_000


class TranscriptInvalid(Exception):
    """The file is not an importable transcript; ``errors`` are readable lines such as
    ``"line 3: seq must be 3, not 5"``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass
class LineEvent:
    """One event as the format carries it."""

    seq: int
    type: str
    at: dt.datetime
    actor: str | None
    cell: int | None
    payload: dict[str, Any]


@dataclass
class ParsedTranscript:
    header: dict[str, Any]
    events: list[LineEvent] = field(default_factory=list)


def header_line(session: dict[str, Any], *, exported_at: dt.datetime) -> str:
    """The first line: format, version and the session's metadata."""
    return _dump(
        {
            "format": FORMAT,
            "version": VERSION,
            "exported_at": exported_at.isoformat(),
            "session": session,
        }
    )


def event_line(
    *, seq: int, type: str, at: dt.datetime, actor: str | None, cell: int | None, payload: dict
) -> str:
    """One event line. ``cell`` is the cell's position in its session (not a database id);
    a ``cell_id`` key in the payload is dropped because ``cell`` carries it, and so is the
    ``_actor`` key an import uses for names that are not users (``actor`` carries it)."""
    body = {k: v for k, v in payload.items() if k not in ("cell_id", "_actor")}
    return _dump(
        {
            "seq": seq,
            "type": type,
            "at": at.isoformat(),
            "actor": actor,
            "cell": cell,
            "payload": body,
        }
    )


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def parse(data: bytes, *, max_bytes: int, max_events: int) -> ParsedTranscript:
    """Validate and read a whole JSONL transcript.

    Checks the size, UTF-8, the header (format and a supported version), and every event
    line: a JSON object with an integer ``seq`` counting up from 1 without gaps, a dotted
    lower-case ``type``, an ISO 8601 ``at`` with a time zone, ``actor`` a string or null,
    ``cell`` the position of a cell created by an earlier ``cell.created`` line (or null),
    an object ``payload``; no NUL characters anywhere. Raises TranscriptInvalid with every
    problem found (up to ``MAX_REPORTED_ERRORS``), each with its line number.
    """
    if len(data) > max_bytes:
        raise TranscriptInvalid(
            [f"The file is {len(data)} bytes; transcripts are limited to {max_bytes} bytes."]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TranscriptInvalid([f"line {line}: not valid UTF-8"]) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise TranscriptInvalid(["The file is empty."])
    errors: list[str] = []
    header = _parse_header(lines[0], errors)
    if errors:
        raise TranscriptInvalid(errors)
    if len(lines) - 1 > max_events:
        raise TranscriptInvalid(
            [f"The file has {len(lines) - 1} events; imports are limited to {max_events}."]
        )
    parsed = ParsedTranscript(header=header)
    cells: set[int] = set()
    for number, text_line in enumerate(lines[1:], start=2):
        if len(errors) >= MAX_REPORTED_ERRORS:
            errors.append("... further lines not checked")
            break
        event = _parse_event(text_line, number, len(parsed.events) + 1, cells, errors)
        if event is not None:
            parsed.events.append(event)
    if errors:
        raise TranscriptInvalid(errors)
    return parsed


def _load(line: str, number: int, errors: list[str]) -> dict[str, Any] | None:
    if "\\u0000" in line or "\x00" in line:
        errors.append(f"line {number}: contains a NUL character")
        return None
    try:
        value = json.loads(line, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        errors.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
        return None
    except (ValueError, RecursionError) as exc:
        errors.append(f"line {number}: not valid JSON ({exc})")
        return None
    if not isinstance(value, dict):
        errors.append(f"line {number}: must be a JSON object")
        return None
    return value


def _refuse_constant(name: str) -> Any:
    # Python reads NaN and Infinity, which are not JSON (and which PostgreSQL refuses).
    raise ValueError(f"{name} is not a JSON number")


def _parse_header(line: str, errors: list[str]) -> dict[str, Any]:
    header = _load(line, 1, errors)
    if header is None:
        return {}
    if header.get("format") != FORMAT:
        errors.append(f"line 1: the header's format must be {FORMAT!r}")
    version = header.get("version")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        errors.append(f"line 1: unsupported version {version!r} (supported: {supported})")
    if not isinstance(header.get("session"), dict):
        errors.append("line 1: the header needs a session object")
    return header


def _parse_event(
    line: str, number: int, expected_seq: int, cells: set[int], errors: list[str]
) -> LineEvent | None:
    value = _load(line, number, errors)
    if value is None:
        return None
    problems: list[str] = []
    seq = value.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq != expected_seq:
        problems.append(f"seq must be {expected_seq}, not {seq!r}")
    type_ = value.get("type")
    if not isinstance(type_, str) or len(type_) > 40 or not TYPE_PATTERN.match(type_):
        problems.append(f"type {type_!r} is not a dotted lower-case name of up to 40 characters")
    at = _parse_time(value.get("at"))
    if at is None:
        problems.append("at must be an ISO 8601 time with a time zone")
    actor = value.get("actor")
    if actor is not None and (not isinstance(actor, str) or len(actor) > 150):
        problems.append("actor must be a name (up to 150 characters) or null")
    payload = value.get("payload")
    if not isinstance(payload, dict):
        problems.append("payload must be an object")
        payload = {}
    if isinstance(type_, str) and TYPE_PATTERN.match(type_):
        problems.extend(_payload_problems(type_, payload))
    cell = value.get("cell")
    if type_ == registry.CELL_CREATED:
        position = payload.get("position")
        if (
            not isinstance(position, int)
            or isinstance(position, bool)
            or not 1 <= position <= MAX_POSITION
            or position in cells
        ):
            problems.append(
                f"a cell.created payload needs a new integer position from 1 to {MAX_POSITION}"
            )
        elif cell != position:
            problems.append("cell must equal the payload's position")
        if payload.get("kind") not in CELL_KINDS:
            problems.append(f"cell kind must be one of {', '.join(CELL_KINDS)}")
        if not isinstance(payload.get("source"), str):
            problems.append("a cell.created payload needs a source string")
        if payload.get("status", "queued") not in CELL_STATUSES:
            problems.append(f"cell status must be one of {', '.join(CELL_STATUSES)}")
        if not problems and isinstance(position, int):
            cells.add(position)
    elif cell is not None and (not isinstance(cell, int) or cell not in cells):
        problems.append(f"cell {cell!r} was not created by an earlier line")
    elif type_ == registry.CELL_FINISHED and payload.get("status") not in CELL_STATUSES[2:]:
        problems.append(f"a cell.finished status must be one of {', '.join(CELL_STATUSES[2:])}")
    if problems:
        errors.extend(f"line {number}: {problem}" for problem in problems)
        return None
    assert at is not None and isinstance(type_, str) and isinstance(seq, int)
    return LineEvent(seq=seq, type=type_, at=at, actor=actor, cell=cell, payload=payload)


def _payload_problems(type_: str, payload: dict[str, Any]) -> list[str]:
    """What is wrong with an event line's payload for its type, by the log's registry. A
    ``cell_id`` the type declares is not in the file (``event_line`` drops it: ``cell``
    carries it, and an import points it at the new cell)."""
    event_type = registry.TYPES.get(type_)
    if event_type is not None and "cell_id" in event_type.payload:
        payload = {**payload, "cell_id": 0}
    return registry.problems(type_, payload)


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
