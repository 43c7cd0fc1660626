"""Every event type of the log, declared once: its name, a human label, the shape of its
payload, and how it renders.

Code that writes or reads the log uses the constants here (``registry.CELL_OUTPUT``), never
string literals. ``append_event`` checks each payload against its type's shape: a missing,
extra or wrongly typed key is a programming error and raises ``EventInvalid``. Imports check
the events of a transcript file with ``problems``, which reports instead of raising.

Rendering stays where it is; an entry only names it: ``template`` is the fragment the live
notebook page renders the event with ("" when the page does not show it), ``transcript`` the
word the transcript view labels it with ("": the type's name itself).

The websocket protocol (``static/js/notebook.js``) carries these names as they are; they are
part of the wire format, so renaming one is a format change (docs/transcript-format.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Keys every payload may carry: an imported transcript's events are flagged and keep their
# recorded actor's name as plain text (see ``agentide.events.log.IMPORTED``).
META_KEYS = {"_imported": bool, "_actor": str}

NONE = type(None)
OPTIONAL_INT = (int, NONE)
OPTIONAL_STR = (str, NONE)

# The notebook page's fragments (see ``template`` above).
NOTEBOOK_TEMPLATE = "sessions/_event.html"
AGENT_TEMPLATE = "agents/_event.html"
APPROVAL_MODE_TEMPLATE = "agents/_approval_mode.html"
COMMENT_TEMPLATE = "transcripts/_comment_event.html"


class EventInvalid(ValueError):
    """An event of an unknown type, or with a payload that does not match its type."""


@dataclass(frozen=True)
class EventType:
    name: str
    label: str
    # key -> the type (or tuple of types) its value must have; ``optional`` keys may be absent.
    payload: Mapping[str, type | tuple[type, ...]]
    optional: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    template: str = ""
    transcript: str = ""

    def problems(self, payload: Any) -> list[str]:
        """What is wrong with ``payload`` for this type (empty when nothing is)."""
        if not isinstance(payload, dict):
            return [f"the payload of {self.name} must be an object"]
        found = []
        for key in self.payload.keys() - payload.keys():
            found.append(f"{self.name} needs the payload key {key!r}")
        for key, value in payload.items():
            expected = self.payload.get(key) or self.optional.get(key) or META_KEYS.get(key)
            if expected is None:
                found.append(f"{self.name} has no payload key {key!r}")
            elif not _is(value, expected):
                found.append(f"{self.name}'s {key!r} must be {_names(expected)}, not {value!r:.40}")
        return sorted(found)


def _is(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _names(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("null" if t is NONE else t.__name__ for t in types)


TYPES: dict[str, EventType] = {}


def _declare(*args: Any, **kwargs: Any) -> str:
    event_type = EventType(*args, **kwargs)
    assert event_type.name not in TYPES, event_type.name
    TYPES[event_type.name] = event_type
    return event_type.name


def get(name: str) -> EventType:
    """The declared type ``name``; raises EventInvalid for a name nobody declared."""
    try:
        return TYPES[name]
    except KeyError:
        raise EventInvalid(f"{name!r} is not an event type") from None


def check(name: str, payload: Any) -> None:
    """Raise EventInvalid unless ``payload`` is a valid payload of event type ``name``."""
    found = get(name).problems(payload)
    if found:
        raise EventInvalid("; ".join(found))


def problems(name: str, payload: Any) -> list[str]:
    """What is wrong with an event of type ``name`` and ``payload`` (for reports)."""
    event_type = TYPES.get(name)
    if event_type is None:
        return [f"{name!r} is not an event type"]
    return event_type.problems(payload)


def names(prefix: str) -> frozenset[str]:
    """The declared names starting with ``prefix`` (e.g. ``AGENT_PREFIX``)."""
    return frozenset(name for name in TYPES if name.startswith(prefix))


CELL_PREFIX = "cell."
AGENT_PREFIX = "agent."
ANNOTATION_PREFIX = "annotation."

# --- cells (sessions) ---------------------------------------------------------------------------

_CELL_STATE = {"cell_id": int, "status": str}
CELL_CREATED = _declare(
    "cell.created",
    "Cell created",
    {**_CELL_STATE, "position": int, "kind": str, "source": str, "error": str},
    template=NOTEBOOK_TEMPLATE,
    transcript="created",
)
CELL_STARTED = _declare(
    "cell.started", "Command started", _CELL_STATE, template=NOTEBOOK_TEMPLATE,
    transcript="started",
)  # fmt: skip
CELL_OUTPUT = _declare(
    "cell.output",
    "Output",
    {"text": str},
    optional={"sgr": str, "tail": bool},
    template=NOTEBOOK_TEMPLATE,
    transcript="output",
)
CELL_CANCEL_REQUESTED = _declare(
    "cell.cancel_requested", "Cancel requested", _CELL_STATE, template=NOTEBOOK_TEMPLATE,
    transcript="cancel requested",
)  # fmt: skip
CELL_FINISHED = _declare(
    "cell.finished",
    "Cell finished",
    {
        **_CELL_STATE,
        "outcome": str,
        "exit_code": OPTIONAL_INT,
        "duration_ms": OPTIONAL_INT,
        "error": str,
        "output_chars": int,
        "truncated": bool,
    },
    # Who said how the command ended (the sandbox runner), kept for audit.
    optional={"reported_by": dict},
    template=NOTEBOOK_TEMPLATE,
    transcript="finished",
)

# A checkpoint of /workspace taken for a cell (agentide/sandboxes/checkpoints.py): "before"
# it ran and "after" it ended. ``checkpoint`` is None and ``error`` says why when none was
# taken (checkpoints off, over the storage limit, a workspace that could not be read).
CELL_CHECKPOINT = _declare(
    "cell.checkpoint",
    "Checkpoint",
    {
        "cell_id": int,
        "phase": str,
        "checkpoint": OPTIONAL_INT,
        "files": int,
        "bytes": int,
        "added_bytes": int,
        "error": str,
    },
    transcript="checkpoint",
)
# A fork's workspace: the checkpoint it starts from (None: none was found) and the ignored
# paths that were not copied (environments a fork re-creates by running their commands).
WORKSPACE_FORKED = _declare(
    "workspace.forked",
    "Workspace forked",
    {"checkpoint": OPTIONAL_INT, "ignored": list, "message": str},
    transcript="workspace",
)

# --- the session ------------------------------------------------------------------------------

SESSION_RENAMED = _declare(
    "session.renamed", "Session renamed", {"title": str}, template=NOTEBOOK_TEMPLATE,
    transcript="session renamed",
)  # fmt: skip
SESSION_ENDED = _declare("session.ended", "Session ended", {"message": str})
ERROR = _declare("error", "Error", {"message": str}, transcript="error")
QUOTA_EXCEEDED = _declare("quota.exceeded", "Quota exceeded", {"limit": str, "message": str})

# --- the sandbox ------------------------------------------------------------------------------

SANDBOX_STATE = _declare(
    "sandbox.state",
    "Sandbox state",
    {"state": str},
    optional={"container": str, "was": str, "error": str, "pool": bool},
    template=NOTEBOOK_TEMPLATE,
    transcript="sandbox",
)

# --- the shared terminal (sessions/terminals.py) ------------------------------------------------

TERMINAL_OPENED = _declare(
    "terminal.opened", "Terminal opened", {"terminal_id": str, "rows": int, "cols": int}
)
TERMINAL_OUTPUT = _declare(
    "terminal.output", "Terminal output", {"text": str}, optional={"tail": bool}
)
TERMINAL_INPUT = _declare("terminal.input", "Terminal input", {"line": str})
TERMINAL_CLOSED = _declare(
    "terminal.closed",
    "Terminal closed",
    {"terminal_id": str, "exit_code": OPTIONAL_INT, "how": str},
)

# --- the agent's turn (agents/services.py) ------------------------------------------------------

AGENT_REQUEST = _declare(
    "agent.request",
    "Model request",
    {
        "step": int,
        "model": str,
        "kind": str,
        "items": int,
        "estimated_tokens": int,
        "previous_response_id": OPTIONAL_STR,
    },
    template=AGENT_TEMPLATE,
    transcript="model request",
)
AGENT_TEXT = _declare(
    "agent.text", "Streamed text", {"step": int, "text": str}, template=AGENT_TEMPLATE,
    transcript="streamed text",
)  # fmt: skip
AGENT_MESSAGE = _declare(
    "agent.message",
    "Answer",
    {"step": int, "text": str},
    # The text streamed before the model call failed.
    optional={"partial": bool},
    template=AGENT_TEMPLATE,
    transcript="answer",
)
AGENT_TOOL_CALL = _declare(
    "agent.tool_call",
    "Tool call",
    {
        "step": int,
        "call_id": str,
        "form": str,
        "commands": list,
        "timeout_ms": OPTIONAL_INT,
        "max_output_length": OPTIONAL_INT,
        "name": str,
        "arguments": str,
        "error": str,
    },
    # A call of a client's function tool (an API request's ``tools``): the turn ends on it
    # and the API client answers it (``api.request`` input ``function_call_output``).
    optional={"client": bool},
    template=AGENT_TEMPLATE,
    transcript="tool call",
)
AGENT_COMMAND_STARTED = _declare(
    "agent.command_started",
    "Command started",
    {"call_id": str, "index": int, "command": str, "timeout_s": int},
    template=AGENT_TEMPLATE,
    transcript="command",
)
AGENT_OUTPUT = _declare(
    "agent.output",
    "Command output",
    {"call_id": str, "index": int, "text": str},
    template=AGENT_TEMPLATE,
    transcript="output",
)
AGENT_COMMAND_FINISHED = _declare(
    "agent.command_finished",
    "Command finished",
    {
        "call_id": str,
        "index": int,
        "outcome": str,
        "exit_code": OPTIONAL_INT,
        "duration_ms": int,
    },
    template=AGENT_TEMPLATE,
    transcript="command finished",
)
AGENT_TOOL_RESULT = _declare(
    "agent.tool_result",
    "Tool result",
    {
        "call_id": str,
        "form": str,
        "outputs": list,
        "error": str,
        "max_output_length": OPTIONAL_INT,
    },
    template=AGENT_TEMPLATE,
    transcript="tool result",
)
AGENT_RESPONSE = _declare(
    "agent.response",
    "Model response",
    {
        "step": int,
        "response_id": OPTIONAL_STR,
        "usage": dict,
        "calls": int,
        "context_tokens": int,
    },
    # Logs written before the context meter lack it.
    optional={"context_window": int},
    template=AGENT_TEMPLATE,
    transcript="model response",
)
AGENT_COMPACTION = _declare(
    "agent.compaction",
    "Compaction",
    {"summary": str, "through_position": int, "tokens_before": int, "usage": dict},
    template=AGENT_TEMPLATE,
    transcript="compaction",
)
AGENT_ERROR = _declare(
    "agent.error",
    "Agent error",
    {"message": str, "permanent": bool, "status_code": OPTIONAL_INT},
    template=AGENT_TEMPLATE,
    transcript="agent error",
)
AGENT_TURN_FINISHED = _declare(
    "agent.turn_finished",
    "Turn finished",
    {"reason": str, "steps": int, "usage": dict, "cost": str},
    template=AGENT_TEMPLATE,
    transcript="turn finished",
)
AGENT_APPROVAL_MODE = _declare(
    "agent.approval_mode",
    "Approval mode",
    {"required": bool, "session_id": int},
    template=APPROVAL_MODE_TEMPLATE,
)
AGENT_APPROVAL_REQUESTED = _declare(
    "agent.approval_requested",
    "Approval requested",
    {"approval_id": int, "session_id": int, "call_id": str, "index": int, "command": str},
    template=AGENT_TEMPLATE,
)
AGENT_APPROVAL_DECIDED = _declare(
    "agent.approval_decided",
    "Approval decided",
    {
        "approval_id": int,
        "call_id": str,
        "index": int,
        "status": str,
        "reason": str,
        "by": str,
    },
    template=AGENT_TEMPLATE,
)

# --- the hosted API (api) ---------------------------------------------------------------------

# The request of an API response (``/v1/responses``), appended on its prompt cell in the same
# transaction as the cell is submitted; the turn loop reads it at the start of that cell's turn.
# ``input`` items are normalised by the API to exactly
# ``{"type": "message", "role": "user"|"assistant"|"system"|"developer", "content": str}`` and
# ``{"type": "function_call_output", "call_id": str, "output": str}``; ``tools`` are the client's
# function tools ``{"type": "function", "name", "description", "parameters", "strict"}``;
# ``shell`` says whether the request offered the shell tool; ``instructions`` None keeps the
# project's.
API_REQUEST = _declare(
    "api.request",
    "API request",
    {
        "response_id": str,
        "key_name": str,
        "instructions": OPTIONAL_STR,
        "input": list,
        "tools": list,
        "shell": bool,
        "max_output_tokens": OPTIONAL_INT,
    },
    transcript="api request",
)

# --- comments (transcripts) -------------------------------------------------------------------

ANNOTATION_ADDED = _declare(
    "annotation.added",
    "Comment",
    {"target_seq": int, "body": str},
    template=COMMENT_TEMPLATE,
    transcript="comment",
)
ANNOTATION_RESOLVED = _declare(
    "annotation.resolved",
    "Comment resolved",
    {"annotation_seq": int, "target_seq": int, "resolved": bool},
    template=COMMENT_TEMPLATE,
    transcript="comment resolved",
)

AGENT_TYPES = names(AGENT_PREFIX)
ANNOTATION_TYPES = names(ANNOTATION_PREFIX)
