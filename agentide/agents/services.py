"""Agent workflows: provider settings and their access helper, and the turn loop.

A turn runs one prompt cell: model call -> shell calls run in the session's sandbox -> outputs
back -> ... until a final answer, the step limit, an error or a cancel. A prompt cell of the
hosted API carries its request (an ``api.request`` event): its input items stand for the
prompt, its instructions, function tools, shell switch and output cap apply to the turn, and
the turn also ends when the model calls one of the client's function tools (the client
answers it in a later request) or hits the output cap. Everything it does is
an event of the cell (``agent.*`` types) appended to the event log (events written back to
back share one append: ``Turn.hold``); the model's input is rebuilt from those events and the
session's other cells at the start of the turn (and after a compaction), then kept in step.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, JSONField, OuterRef, Subquery
from django.http import Http404
from django.utils import timezone

from agentide.accounts.models import Membership, User
from agentide.accounts.services import require
from agentide.agents.backends.base import (
    DEFAULT_OPTIONS,
    CommandOutput,
    FunctionCall,
    FunctionOutput,
    FunctionTool,
    HistoryItem,
    Message,
    ModelBackend,
    ModelCallCancelled,
    ModelError,
    ModelReply,
    ProviderConfig,
    ShellCall,
    ShellResult,
    TurnOptions,
    Usage,
)
from agentide.agents.backends.openai import make_backend
from agentide.agents.models import (
    CommandApproval,
    ModelProvider,
    SessionAgent,
    base_url_allowed,
    site_egress_policy,
    site_key_allowed,
)
from agentide.events import registry
from agentide.events.log import append_event, append_events
from agentide.events.models import Event
from agentide.lib import ansi
from agentide.lib.output import CappedOutput, StreamDecoder
from agentide.lib.sealed import SealError
from agentide.projects.models import Project
from agentide.projects.services import get_project_for_user
from agentide.quotas import services as quotas
from agentide.sandboxes import services as sandboxes
from agentide.sessions.execution import CellLease, CellResult, OutputPump
from agentide.sessions.models import Cell, Session

log = logging.getLogger(__name__)
NO_PROVIDER_MESSAGE = "No model is configured for this project: an owner or admin sets one up."


def get_provider_for_user(
    user: User, team_slug: str, project_slug: str, *, manage: bool = False
) -> tuple[ModelProvider, Membership]:
    """Return the project's provider settings (unsaved defaults when none exist yet) and the
    user's membership. Raises Http404 for other teams' projects, PermissionDenied when
    ``manage`` is asked of a member or reviewer."""
    project, membership = get_project_for_user(user, team_slug, project_slug, manage=manage)
    return provider_for_project(project), membership


def provider_for_project(project: Project) -> ModelProvider:
    """The project's provider settings, or unsaved defaults."""
    try:
        return ModelProvider.objects.select_related("project__team").get(project=project)
    except ModelProvider.DoesNotExist:
        return ModelProvider(project=project)


@transaction.atomic
def update_provider(
    actor: Membership,
    provider: ModelProvider,
    changes: dict[str, Any],
    *,
    api_key: str = "",
    forget_api_key: bool = False,
) -> ModelProvider:
    """Save validated ``changes``; seal ``api_key`` when given, drop the stored key when
    ``forget_api_key``. Owners and admins only."""
    require(actor, manage=True)
    if provider.project.team_id != actor.team_id:
        raise ValidationError("This provider belongs to another team.")
    for field, value in changes.items():
        setattr(provider, field, value)
    if forget_api_key:
        provider.set_api_key("")
    elif api_key:
        provider.set_api_key(api_key)
    provider.full_clean()
    provider.save()
    return provider


def provider_config(provider: ModelProvider) -> ProviderConfig:
    """What a backend needs to reach the provider, with the API key resolved.

    Raises a permanent ModelError when no usable key is configured.
    """
    if not base_url_allowed(provider.base_url):
        raise ModelError(
            "This site does not allow model requests to the configured base URL.", permanent=True
        )
    key = ""
    if provider.api_key_env:
        if provider.api_key_env not in settings.AGENTIDE_MODEL_KEY_VARS:
            raise ModelError(
                f"{provider.api_key_env} is not an allowed API key variable.", permanent=True
            )
        if not site_key_allowed(provider.base_url):
            raise ModelError(
                f"This site sends its own keys ({provider.api_key_env}) only to "
                f"{', '.join(settings.AGENTIDE_MODEL_KEY_HOSTS) or 'no host'}: store the "
                "team's own API key for this base URL.",
                permanent=True,
            )
        key = os.environ.get(provider.api_key_env, "")
        if not key:
            raise ModelError(
                f"The worker's environment has no {provider.api_key_env}.", permanent=True
            )
    elif provider.has_stored_key:
        try:
            key = provider.stored_api_key()
        except SealError as exc:
            raise ModelError(str(exc), permanent=True) from exc
    return ProviderConfig(
        kind=provider.kind,  # type: ignore[arg-type]
        model=provider.model,
        api_key=key,
        base_url=provider.base_url,
        instructions=provider.instructions,
        stores_responses=provider.stores_responses,
        timeout_s=settings.AGENTIDE_MODEL_TIMEOUT_S,
        max_retries=settings.AGENTIDE_MODEL_MAX_RETRIES,
        egress=site_egress_policy(),
    )


def check_connection(actor: Membership, provider: ModelProvider) -> str:
    """Send one tiny request with the saved settings; return the model's answer.

    Owners and admins only. Raises ModelError saying what is wrong.
    """
    require(actor, manage=True)
    text, _usage = make_backend(provider_config(provider)).complete("Reply with the word OK.")
    return text


# --- the turn loop ------------------------------------------------------------------------------

TEXT = registry.AGENT_TEXT
MESSAGE = registry.AGENT_MESSAGE
REQUEST = registry.AGENT_REQUEST
RESPONSE = registry.AGENT_RESPONSE
TOOL_CALL = registry.AGENT_TOOL_CALL
COMMAND_STARTED = registry.AGENT_COMMAND_STARTED
OUTPUT = registry.AGENT_OUTPUT
COMMAND_FINISHED = registry.AGENT_COMMAND_FINISHED
TOOL_RESULT = registry.AGENT_TOOL_RESULT
COMPACTION = registry.AGENT_COMPACTION
ERROR = registry.AGENT_ERROR
TURN_FINISHED = registry.AGENT_TURN_FINISHED
APPROVAL_MODE = registry.AGENT_APPROVAL_MODE
APPROVAL_REQUESTED = registry.AGENT_APPROVAL_REQUESTED
APPROVAL_DECIDED = registry.AGENT_APPROVAL_DECIDED
API_REQUEST = registry.API_REQUEST

# What a client function call left unanswered is answered with (strict APIs want an answer).
UNANSWERED_CALL = "Not answered: the client sent no output for this call."
# The smallest output cap OpenAI's Responses API takes; a turn whose remaining output budget
# is below it ends instead of asking for fewer tokens.
MIN_OUTPUT_TOKENS = 16
# Cell outcomes (16 characters at most) for turn-end reasons that do not fit.
CELL_OUTCOMES = {"max_output_tokens": "incomplete"}
MESSAGE_ROLES = ("user", "assistant", "system", "developer")

CHARS_PER_TOKEN = 4
# Lines typed in the shared terminal that the next turn's input carries, at most.
TERMINAL_HISTORY_LINES = 50
COMPACTION_PROMPT = (
    "Summarise the work so far in this shared terminal session for the assistant who will "
    "continue it: the goals people stated, what was run and what it showed, files and "
    "environments created (paths, virtualenvs, installed packages), decisions, open problems. "
    "Be concise and concrete; keep exact paths and commands.\n\n--- transcript ---\n"
)


def estimate_tokens(items: Iterable[HistoryItem]) -> int:
    """A provider-independent size estimate (about four characters per token), no downloads."""
    return sum(len(repr(item)) for item in items) // CHARS_PER_TOKEN + 1


def shorten(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters: head and tail with a note in between."""
    if len(text) <= limit:
        return text
    capture = CappedOutput(head_chars=limit // 2, tail_chars=limit - limit // 2)
    capture.append(text)
    return capture.text(marker="\n[... {omitted} characters omitted ...]\n")


@dataclass
class Transcript:
    """The model's view of a session, rebuilt from cells and their events.

    ``items`` is the full history; ``chain_id``/``chain_from`` say where a stored response
    can continue (``items[chain_from:]`` are what came after response ``chain_id``).
    """

    items: list[HistoryItem]
    chain_id: str = ""
    chain_from: int = 0
    chain_tokens: int = 0
    compacted_through: int = 0
    # Where the current cell's prompt (or API input) starts in ``items``.
    current_from: int = 0


def build_transcript(session_id: int, current: Cell) -> Transcript:
    """Rebuild the model's input from the session's finished cells before ``current`` (shell
    cells people ran and their output, notes, other prompts with the agent's steps) and the
    events of ``current`` so far. The latest compaction replaces everything it covered.
    A prompt cell of the API stands in the history as its request's input items. Calls left
    without an answer (a cancelled turn, a client function call nobody answered) get an
    error answer so the input stays valid for strict APIs."""
    compaction = (
        Event.objects.filter(session_id=session_id, type=COMPACTION)
        .order_by("-seq")
        .values("payload")
        .first()
    )
    through = int(compaction["payload"]["through_position"]) if compaction else 0
    transcript = Transcript(items=[], compacted_through=through)
    items = transcript.items
    if compaction:
        items.append(
            Message("user", "[Summary of the earlier session]\n" + compaction["payload"]["summary"])
        )
    cells = (
        Cell.objects.filter(
            session_id=session_id, position__gt=through, position__lte=current.position
        )
        .select_related("author")
        .annotate(
            api_request=Subquery(
                Event.objects.filter(cell_id=OuterRef("pk"), type=API_REQUEST).values("payload")[
                    :1
                ],
                output_field=JSONField(),
            )
        )
        .order_by("position")
    )
    output_chars = settings.AGENTIDE_AGENT_OUTPUT_CHARS
    for cell in cells:
        who = cell.author.username if cell.author else "someone"
        if cell.pk != current.pk and not cell.is_done:
            continue
        if cell.kind == Cell.Kind.NOTE:
            items.append(Message("user", f"[Note by {who}]\n{cell.source}"))
        elif cell.kind == Cell.Kind.SHELL:
            if cell.outcome == "timeout":
                end = "timed out"
            elif cell.outcome in ("cancelled", "oom") or cell.exit_code is None:
                end = cell.outcome or cell.status
            else:
                end = f"exit code {cell.exit_code}"
            items.append(
                Message(
                    "user",
                    f"[{who} ran a shell cell]\n$ {cell.source}\n"
                    f"{shorten(cell.output, output_chars)}\n[{end}]",
                )
            )
        else:
            if cell.pk == current.pk:
                if terminal := terminal_since_previous_turn(current):
                    items.append(Message("user", terminal))
                transcript.current_from = len(items)
            if cell.api_request is not None:
                items.extend(request_items(cell.api_request))
            else:
                items.append(Message("user", f"[Prompt from {who}]\n{cell.source}"))
            _append_turn_items(transcript, cell)
    _answer_function_calls(transcript)
    return transcript


def api_request(cell: Cell) -> dict[str, Any] | None:
    """The payload of the cell's ``api.request`` (None for a prompt from the notebook)."""
    return (
        Event.objects.filter(cell=cell, type=API_REQUEST)
        .values_list("payload", flat=True)
        .first()
    )


def request_items(payload: dict[str, Any]) -> list[HistoryItem]:
    """The history items of an API request's input (messages and function call outputs)."""
    items: list[HistoryItem] = []
    for entry in payload.get("input") or ():
        if entry.get("type") == "function_call_output":
            items.append(FunctionOutput(str(entry.get("call_id")), str(entry.get("output"))))
        else:
            role = entry.get("role") if entry.get("role") in MESSAGE_ROLES else "user"
            items.append(
                Message(
                    cast(Literal["user", "assistant", "system", "developer"], role),
                    str(entry.get("content") or ""),
                )
            )
    return items


def turn_options(payload: dict[str, Any] | None) -> TurnOptions:
    """What an API request asks of its turn (the defaults for a prompt from the notebook)."""
    if payload is None:
        return DEFAULT_OPTIONS
    return TurnOptions(
        instructions=payload["instructions"],
        tools=tuple(
            FunctionTool(
                name=str(tool["name"]),
                description=str(tool.get("description") or ""),
                parameters=dict(tool.get("parameters") or {}),
                strict=bool(tool.get("strict")),
            )
            for tool in payload["tools"]
        ),
        shell=payload["shell"],
        max_output_tokens=payload["max_output_tokens"],
    )


def _answer_function_calls(transcript: Transcript) -> None:
    """Put the answer of each client function call right after the reply that made it (and
    the results of that reply's shell calls), where Chat APIs want it, whichever later
    request brought it; answer calls nobody answered with ``UNANSWERED_CALL``; turn outputs
    of no call in the history (a compacted or unknown one) into a user message. Keeps
    ``chain_from`` and ``current_from`` pointing at the same places."""
    items = transcript.items
    if not any(isinstance(item, FunctionCall | FunctionOutput) for item in items):
        return
    calls: set[str] = set()
    answers: dict[str, FunctionOutput] = {}
    moved: set[int] = set()
    for index, item in enumerate(items):
        if isinstance(item, FunctionCall):
            calls.add(item.call_id)
        elif isinstance(item, FunctionOutput) and item.call_id in calls:
            if item.call_id not in answers:
                answers[item.call_id] = item
            moved.add(index)
    # Each new item's place in the old list: old index, or ``j + 0.5`` for an answer put
    # after old item ``j``; an old boundary ``k`` (items[:k]) becomes the count of places
    # below ``k - 0.5``, so an answer put right at the boundary falls after it.
    result: list[HistoryItem] = []
    places: list[float] = []
    pending: list[FunctionCall] = []
    last = -1
    answered = False  # results of the pending calls' reply have been seen

    def settle() -> None:
        for call in pending:
            answer = answers.get(call.call_id) or FunctionOutput(call.call_id, UNANSWERED_CALL)
            result.append(answer)
            places.append(last + 0.5)
        pending.clear()

    for index, item in enumerate(items):
        if index in moved:
            continue
        if pending and (
            not isinstance(item, ShellCall | FunctionCall | ShellResult)
            or (answered and not isinstance(item, ShellResult))
        ):
            settle()
        if isinstance(item, FunctionCall):
            pending.append(item)
            answered = False
        elif isinstance(item, ShellResult):
            answered = True
        elif isinstance(item, FunctionOutput):
            item = Message("user", f"[Output of function call {item.call_id}]\n{item.output}")
        result.append(item)
        places.append(index)
        last = index
    settle()

    def boundary(k: int) -> int:
        return sum(1 for place in places if place < k - 0.5)

    transcript.chain_from = boundary(transcript.chain_from)
    transcript.current_from = boundary(transcript.current_from)
    transcript.items = result


def terminal_since_previous_turn(current: Cell) -> str:
    """What happened in the session's shared terminal after the previous prompt's turn and
    before ``current`` started, as one message for the model: the last
    ``TERMINAL_HISTORY_LINES`` lines typed, with who typed them, and the last
    ``AGENTIDE_AGENT_OUTPUT_CHARS`` characters it printed, as plain text. "" when nothing
    was typed or printed there."""
    events = Event.objects.filter(session_id=current.session_id)
    previous = (
        Cell.objects.filter(
            session_id=current.session_id, kind=Cell.Kind.PROMPT, position__lt=current.position
        )
        .order_by("-position")
        .first()
    )
    if previous is not None:
        last = events.filter(cell=previous).order_by("-seq").values_list("seq", flat=True).first()
        events = events.filter(seq__gt=last or 0)
    started = (
        events.filter(cell=current, type=registry.CELL_STARTED)
        .order_by("seq")
        .values_list("seq", flat=True)
        .first()
    )
    if started is not None:
        events = events.filter(seq__lt=started)
    limit = settings.AGENTIDE_AGENT_OUTPUT_CHARS
    # Newest first, only as many events as the bound needs.
    chunks: list[str] = []
    size = 0
    outputs = events.filter(type=registry.TERMINAL_OUTPUT).order_by("-seq")
    for text in outputs.values_list("payload__text", flat=True).iterator(chunk_size=64):
        chunks.append(str(text or ""))
        size += len(chunks[-1])
        if size > limit:
            break
    output = ansi.plain_text("".join(reversed(chunks)))
    if size > limit:
        output = "[... earlier output omitted ...]\n" + output[-limit:]
    typed = list(
        events.filter(type=registry.TERMINAL_INPUT)
        .select_related("actor")
        .order_by("-seq")[: TERMINAL_HISTORY_LINES + 1]
    )
    if not output.strip() and not typed:
        return ""
    lines = [
        f"{event.actor.username if event.actor else 'someone'}: {event.payload.get('line', '')}"
        for event in reversed(typed[:TERMINAL_HISTORY_LINES])
    ]
    if len(typed) > TERMINAL_HISTORY_LINES:
        lines.insert(0, "[... earlier lines omitted ...]")
    return (
        "[The session's shared terminal since the previous turn: what people typed there,"
        " then what it printed]\n"
        + (shorten("\n".join(lines), limit // 2) or "(nothing typed)")
        + f"\n--- terminal output (at most the last {limit} characters) ---\n"
        + output
    )


def _append_turn_items(transcript: Transcript, cell: Cell) -> None:
    items = transcript.items
    open_calls: dict[str, ShellCall] = {}
    events = Event.objects.filter(
        cell=cell, type__in=(MESSAGE, TOOL_CALL, TOOL_RESULT, RESPONSE)
    ).order_by("seq")
    for type_, payload in events.values_list("type", "payload"):
        if type_ == MESSAGE and payload.get("text"):
            items.append(Message("assistant", payload["text"]))
        elif type_ == TOOL_CALL and payload.get("client"):
            items.append(FunctionCall(payload["call_id"], payload["name"], payload["arguments"]))
        elif type_ == TOOL_CALL:
            call = ShellCall(
                call_id=payload["call_id"],
                commands=tuple(payload.get("commands") or ()),
                form=payload.get("form", "shell_call"),
                timeout_ms=payload.get("timeout_ms"),
                max_output_length=payload.get("max_output_length"),
                name=payload.get("name", "shell"),
                arguments=payload.get("arguments", ""),
                error=payload.get("error", ""),
            )
            open_calls[call.call_id] = call
            items.append(call)
        elif type_ == TOOL_RESULT:
            open_calls.pop(payload["call_id"], None)
            items.append(_result_from_payload(payload))
        elif type_ == RESPONSE and payload.get("response_id"):
            transcript.chain_id = payload["response_id"]
            transcript.chain_from = len(items)
            transcript.chain_tokens = payload.get("context_tokens", 0)
    for call in open_calls.values():
        items.append(
            ShellResult(
                call.call_id,
                call.form,
                error="Not run: the turn was stopped.",
                max_output_length=call.max_output_length,
            )
        )


def _result_from_payload(payload: dict[str, Any]) -> ShellResult:
    return ShellResult(
        call_id=payload["call_id"],
        form=payload.get("form", "shell_call"),
        outputs=tuple(
            CommandOutput(o["stdout"], o["stderr"], o["outcome"], o.get("exit_code"))
            for o in payload.get("outputs") or ()
        ),
        error=payload.get("error", ""),
        max_output_length=payload.get("max_output_length"),
    )


def _result_payload(result: ShellResult) -> dict[str, Any]:
    return {
        "call_id": result.call_id,
        "form": result.form,
        "outputs": [
            {"stdout": o.stdout, "stderr": o.stderr, "outcome": o.outcome, "exit_code": o.exit_code}
            for o in result.outputs
        ],
        "error": result.error,
        "max_output_length": result.max_output_length,
    }


def shorten_old_outputs(items: list[HistoryItem], *, keep_last: int, limit: int) -> int:
    """Shorten tool outputs (the client's function outputs too) and shell-cell messages
    except the last ``keep_last`` items to ``limit`` characters each (in place); return how
    many were shortened."""
    changed = 0
    for index, item in enumerate(items[: max(0, len(items) - keep_last)]):
        if isinstance(item, ShellResult) and any(
            len(o.stdout) + len(o.stderr) > limit for o in item.outputs
        ):
            items[index] = replace(
                item,
                outputs=tuple(
                    replace(
                        o,
                        stdout=shorten(o.stdout, limit // 2),
                        stderr=shorten(o.stderr, limit // 2),
                    )
                    for o in item.outputs
                ),
            )
            changed += 1
        elif isinstance(item, Message) and item.role == "user" and len(item.text) > limit:
            items[index] = Message("user", shorten(item.text, limit))
            changed += 1
        elif isinstance(item, FunctionOutput) and len(item.output) > limit:
            items[index] = replace(item, output=shorten(item.output, limit))
            changed += 1
    return changed


def record_usage(
    cell: Cell, provider: ModelProvider, usage: Usage, *, purpose: str
) -> dict[str, Any]:
    """Account one model call's tokens: returns the payload stored on the call's event
    (tokens and cost). The single place a usage ledger takes over later."""
    cost = provider.cost(
        input_tokens=usage.input_tokens,
        cached_tokens=usage.cached_tokens,
        output_tokens=usage.output_tokens,
    )
    quotas.charge_model_call(
        cell,
        input_tokens=usage.input_tokens,
        cached_tokens=usage.cached_tokens,
        output_tokens=usage.output_tokens,
        cost=cost,
        detail=f"{purpose}: {provider.model}",
    )
    return {**usage.as_dict(), "cost": str(cost), "purpose": purpose, "model": provider.model}


class TurnStopped(Exception):
    """The turn must end now: ``status`` and ``reason`` say how."""

    def __init__(self, status: str, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.status = status
        self.reason = reason
        self.message = message


class Turn:
    """One agent turn for a claimed prompt cell: the loop and its bookkeeping."""

    def __init__(
        self, cell: Cell, *, backend_factory: Callable[[ProviderConfig], ModelBackend] | None = None
    ) -> None:
        self.cell = cell
        self.session = Session.objects.select_related("project__team").get(pk=cell.session_id)
        self.project = self.session.project
        self.provider = provider_for_project(self.project)
        self.backend_factory = backend_factory or make_backend
        self.totals = Usage()
        self.cost = Decimal(0)
        self.steps = 0
        self.lease: CellLease | None = None
        # One pump for the whole turn: its thread coalesces the live output of model calls
        # and commands (into ``_sink``, set per call) and checks the cell's lease.
        self.pump: OutputPump | None = None
        self._sink: Callable[[str], None] = _discard
        self.busy = False  # a model call or a command of this turn is under way
        self.compactions = 0
        self.backend: ModelBackend | None = None
        # The cell's API request (None for a prompt from the notebook), read once at the start.
        self.request: dict[str, Any] | None = None
        self.options = DEFAULT_OPTIONS
        self.output_tokens = 0  # of this turn's model calls, for the request's output cap
        # Events held to be appended with the next one in one transaction (``hold``); the
        # lock orders them against the pump thread's events.
        self._held: list[Event] = []
        self._events_lock = threading.Lock()

    # events
    def emit(self, type_: str, payload: dict[str, Any]) -> None:
        """Append an event (after the held ones, in the same transaction) and publish it."""
        self.hold(type_, payload)
        self.flush_events()

    def hold(self, type_: str, payload: dict[str, Any]) -> None:
        """Queue an event for the next ``emit``/``flush_events``: events written back to back
        share one transaction (one seq lock, one INSERT) instead of one each. Held events
        are flushed before anything the turn waits for (a model call, a command, an
        approval) and before the turn ends."""
        registry.check(type_, payload)
        with self._events_lock:
            self._held.append(
                Event(session_id=self.session.pk, type=type_, payload=payload, cell=self.cell)
            )

    def flush_events(self) -> None:
        with self._events_lock:
            held, self._held = self._held, []
            if len(held) == 1:
                append_event(self.session.pk, held[0].type, held[0].payload, cell=self.cell)
            elif held:
                append_events(self.session.pk, held)

    def run(self) -> CellResult:
        """Run the turn to its end and return how it ended, for the scheduler to record on
        the cell (never raises for model, sandbox or cancel trouble: those end the turn with
        a readable error)."""
        self.lease = CellLease(self.cell, on_cancel=self._kill_command, busy=lambda: self.busy)
        self.pump = OutputPump(
            self._show,
            interval_s=settings.NOTEBOOK_OUTPUT_FLUSH_MS / 1000,
            max_chars=settings.NOTEBOOK_OUTPUT_FLUSH_CHARS,
            tick=self.lease.check,
            tick_s=settings.NOTEBOOK_CANCEL_POLL_S,
        )
        status: str = Cell.Status.FINISHED
        reason, error = "final", ""
        try:
            self._loop()
        except TurnStopped as stop:
            status, reason, error = stop.status, stop.reason, stop.message
        except ModelError as exc:
            status, reason, error = Cell.Status.FAILED, "error", exc.message
            self.emit(
                ERROR,
                {
                    "message": exc.message,
                    "permanent": exc.permanent,
                    "status_code": exc.status_code,
                },
            )
        except Exception as exc:
            log.exception("agent turn of cell %s failed", self.cell.pk)
            status, reason = Cell.Status.FAILED, "error"
            error = f"The agent turn failed: {getattr(exc, 'message', exc)}"
            self.emit(ERROR, {"message": error, "permanent": True, "status_code": None})
        finally:
            self.pump.close()
        if self._cancel_requested() and status != Cell.Status.FINISHED:
            status, reason, error = Cell.Status.CANCELLED, "cancelled", ""
        self.emit(
            TURN_FINISHED,
            {
                "reason": reason,
                "steps": self.steps,
                "usage": self.totals.as_dict(),
                "cost": str(self.cost),
            },
        )
        return CellResult(status, outcome=CELL_OUTCOMES.get(reason, reason), error=error)

    def _show(self, text: str) -> None:
        self._sink(text)

    def _stream(self, sink: Callable[[str], None]) -> None:
        """Send the pump's output to ``sink`` from now on, after what is buffered went to
        the previous one."""
        assert self.pump is not None
        self.pump.flush()
        self._sink = sink

    def _cancel_requested(self) -> bool:
        return (
            bool(self.lease and self.lease.cancelled.is_set())
            or Cell.objects.filter(pk=self.cell.pk, cancel_requested=True).exists()
        )

    def _kill_command(self) -> bool:
        """Stop the model call or command under way. Returns False: the lease calls it again
        while the turn is busy, so a command starting after the cancel is killed too."""
        if self.backend is not None:
            self.backend.abort()
        try:
            sandboxes.cancel_command(self.session, self.cell.command_id)
        except Exception:
            log.warning("cancelling %s failed", self.cell.command_id, exc_info=True)
        return False

    def _check_cancel(self) -> None:
        # The lease's checks poll the cell; asking it costs no query on every step.
        if self.lease is not None and self.lease.cancelled.is_set():
            raise TurnStopped(Cell.Status.CANCELLED, "cancelled")

    def _loop(self) -> None:
        if self.provider.pk is None:
            raise ModelError(NO_PROVIDER_MESSAGE, permanent=True)
        backend = self.backend = self.backend_factory(provider_config(self.provider))
        self.request = api_request(self.cell)
        self.options = turn_options(self.request)
        broken_chain = False
        # Rebuilt from the event log at the start (and after a compaction), then kept in step
        # with the events this loop writes: a step costs no re-read of the session's history.
        transcript: Transcript | None = None
        while True:
            self._check_cancel()
            if self.steps >= self.provider.max_steps:
                raise TurnStopped(
                    Cell.Status.FAILED,
                    "step_limit",
                    f"The agent reached this project's limit of "
                    f"{self.provider.max_steps} steps for one prompt.",
                )
            if refusal := quotas.model_call_refusal(
                self.session, self.cell.author, steps=self.steps
            ):
                raise TurnStopped(Cell.Status.FAILED, "quota", refusal)
            options = self._step_options()
            self.steps += 1
            if transcript is None:
                transcript = build_transcript(self.session.pk, self.cell)
            compactions = self.compactions
            items, previous = self._fit_context(backend, transcript, broken_chain)
            if self.compactions != compactions:
                transcript = None
            self.emit(
                REQUEST,
                {
                    "step": self.steps,
                    "model": self.provider.model,
                    "kind": self.provider.kind,
                    "items": len(items),
                    "estimated_tokens": estimate_tokens(items),
                    "previous_response_id": previous,
                },
            )
            try:
                reply = self._call_model(backend, items, previous, options)
            except ModelError as exc:
                if previous and exc.status_code in (400, 404) and not broken_chain:
                    # The provider forgot the stored response: send the full input instead.
                    broken_chain = True
                    self.steps -= 1
                    continue
                raise
            if transcript is not None:
                if reply.text:
                    transcript.items.append(Message("assistant", reply.text))
                transcript.items.extend(reply.calls)
                transcript.items.extend(reply.client_calls)
                if reply.response_id:
                    transcript.chain_id = reply.response_id
                    transcript.chain_from = len(transcript.items)
                    transcript.chain_tokens = reply.usage.input_tokens + reply.usage.output_tokens
            self.output_tokens += reply.usage.output_tokens
            if reply.truncated and self.request is not None:
                # Calls of a cut reply are not run (their arguments may be cut too).
                raise TurnStopped(Cell.Status.FINISHED, "max_output_tokens")
            if reply.calls:
                results = self._run_calls(reply.calls)
                if transcript is not None:
                    transcript.items.extend(results)
            if reply.client_calls:
                # The client runs its functions and answers in its next request.
                raise TurnStopped(Cell.Status.FINISHED, "function_call")
            if not reply.calls:
                return

    def _step_options(self) -> TurnOptions:
        """The request's options for the next model call: its output cap is for the whole
        turn, so a call may produce only what earlier calls left (TurnStopped when that is
        below what a model call may ask for)."""
        cap = self.options.max_output_tokens
        if cap is None or not self.steps:
            return self.options
        left = cap - self.output_tokens
        if left < MIN_OUTPUT_TOKENS:
            raise TurnStopped(Cell.Status.FINISHED, "max_output_tokens")
        return replace(self.options, max_output_tokens=left)

    def _fit_context(
        self, backend: ModelBackend, transcript: Transcript, broken_chain: bool
    ) -> tuple[list[HistoryItem], str]:
        """The items to send and the previous_response_id to send them after, kept under
        the project's share of the context window: old outputs are shortened first, then
        the earlier cells are compacted into a summary (an event)."""
        budget = self.provider.context_window * self.provider.context_budget_percent // 100
        chained = (
            self.provider.kind == ModelProvider.Kind.RESPONSES
            and self.provider.stores_responses
            and transcript.chain_id
            and not broken_chain
        )
        if chained:
            delta = transcript.items[transcript.chain_from :]
            if transcript.chain_tokens + estimate_tokens(delta) <= budget:
                return delta, transcript.chain_id
        items = list(transcript.items)
        if estimate_tokens(items) <= budget:
            return items, ""
        short = settings.AGENTIDE_AGENT_SHORT_OUTPUT_CHARS
        shorten_old_outputs(items, keep_last=2, limit=short)
        if estimate_tokens(items) <= budget:
            return items, ""
        if self._compact(backend, transcript):
            items = list(build_transcript(self.session.pk, self.cell).items)
            shorten_old_outputs(items, keep_last=2, limit=short)
        return items, ""

    def _compact(self, backend: ModelBackend, transcript: Transcript) -> bool:
        """Summarise everything before the current prompt with the same model; returns
        False when there is nothing earlier to compact."""
        if transcript.compacted_through >= self.cell.position - 1:
            return False
        earlier = transcript.items[: transcript.current_from]
        text = "\n".join(_transcript_line(item) for item in earlier)
        limit = max(2_000, self.provider.context_window * CHARS_PER_TOKEN // 2)
        summary, usage = backend.complete(COMPACTION_PROMPT + shorten(text, limit))
        usage_payload = self._account(usage, purpose="compaction")
        self.compactions += 1
        self.emit(
            COMPACTION,
            {
                "summary": summary,
                "through_position": self.cell.position - 1,
                "tokens_before": estimate_tokens(transcript.items),
                "usage": usage_payload,
            },
        )
        return True

    def _account(self, usage: Usage, *, purpose: str) -> dict[str, Any]:
        payload = record_usage(self.cell, self.provider, usage, purpose=purpose)
        for name, value in usage.as_dict().items():
            setattr(self.totals, name, getattr(self.totals, name) + value)
        self.cost += Decimal(payload["cost"])
        return payload

    def _call_model(
        self,
        backend: ModelBackend,
        items: list[HistoryItem],
        previous: str,
        options: TurnOptions = DEFAULT_OPTIONS,
    ) -> ModelReply:
        # A reply that arrives whole before the first flush needs no agent.text event: the
        # agent.message written right after carries the same text.
        live = {"emitted": False, "complete": False}

        def show(text: str) -> None:
            if live["complete"] and not live["emitted"]:
                return
            live["emitted"] = True
            self.emit(TEXT, {"step": self.steps, "text": text})

        assert self.lease is not None and self.pump is not None
        pump = self.pump
        cancelled = self.lease.cancelled
        self._stream(show)
        self.busy = True
        try:
            reply = backend.respond(
                items,
                previous_response_id=previous,
                on_text=pump.feed,
                should_stop=cancelled.is_set,
                options=options,
            )
            live["complete"] = True
            self._stream(_discard)
        except ModelCallCancelled as exc:
            self._stream(_discard)
            if exc.partial_text:
                self.emit(MESSAGE, {"step": self.steps, "text": exc.partial_text, "partial": True})
            raise TurnStopped(Cell.Status.CANCELLED, "cancelled") from None
        finally:
            self.busy = False
            self._stream(_discard)
        usage = self._account(reply.usage, purpose="turn")
        # Held: written with the first command's start (or the turn's end) in one go.
        if reply.text:
            self.hold(MESSAGE, {"step": self.steps, "text": reply.text})
        for call in reply.calls:
            self.hold(
                TOOL_CALL,
                {
                    "step": self.steps,
                    "call_id": call.call_id,
                    "form": call.form,
                    "commands": list(call.commands),
                    "timeout_ms": call.timeout_ms,
                    "max_output_length": call.max_output_length,
                    "name": call.name,
                    "arguments": call.arguments,
                    "error": call.error,
                },
            )
        for client_call in reply.client_calls:
            self.hold(
                TOOL_CALL,
                {
                    "step": self.steps,
                    "call_id": client_call.call_id,
                    "form": "function_call",
                    "commands": [],
                    "timeout_ms": None,
                    "max_output_length": None,
                    "name": client_call.name,
                    "arguments": client_call.arguments,
                    "error": "",
                    "client": True,
                },
            )
        self.hold(
            RESPONSE,
            {
                "step": self.steps,
                "response_id": reply.response_id,
                "usage": usage,
                "calls": len(reply.calls) + len(reply.client_calls),
                "context_tokens": reply.usage.input_tokens + reply.usage.output_tokens,
                "context_window": self.provider.context_window,
            },
        )
        return reply

    def _run_calls(self, calls: list[ShellCall]) -> list[ShellResult]:
        results = []
        for call in calls:
            self._check_cancel()
            if call.error:
                result = ShellResult(
                    call.call_id,
                    call.form,
                    error=call.error,
                    max_output_length=call.max_output_length,
                )
            else:
                result = ShellResult(
                    call.call_id,
                    call.form,
                    outputs=tuple(
                        self._run_command(call, index, command)
                        for index, command in enumerate(call.commands)
                    ),
                    max_output_length=call.max_output_length,
                )
            self.hold(TOOL_RESULT, _result_payload(result))
            results.append(result)
        self.flush_events()
        return results

    def _run_command(self, call: ShellCall, index: int, command: str) -> CommandOutput:
        self._check_cancel()
        if approval_required(self.session.pk):
            refusal = self._await_approval(call, index, command)
            if refusal:
                return CommandOutput("", refusal, "exit", 1)
        limit_s = min(self.project.command_timeout_s, settings.NOTEBOOK_MAX_COMMAND_S)
        timeout_s = (
            min(limit_s, max(1, -(-call.timeout_ms // 1000)))
            if call.timeout_ms
            else min(limit_s, settings.AGENTIDE_AGENT_COMMAND_TIMEOUT_S)
        )
        self.emit(
            COMMAND_STARTED,
            {"call_id": call.call_id, "index": index, "command": command, "timeout_s": timeout_s},
        )
        visible = call.max_output_length or settings.AGENTIDE_AGENT_OUTPUT_CHARS
        captures = {
            name: CappedOutput(head_chars=visible // 2, tail_chars=visible - visible // 2)
            for name in ("stdout", "stderr")
        }
        decoders = {name: StreamDecoder() for name in captures}
        live_budget = [settings.NOTEBOOK_OUTPUT_HEAD_CHARS]
        ended = threading.Event()

        def show(text: str) -> None:
            piece = text[: max(0, live_budget[0])]
            live_budget[0] -= len(text)
            if piece:
                # Once the command has ended, its last output goes with its end event.
                append = self.hold if ended.is_set() else self.emit
                append(OUTPUT, {"call_id": call.call_id, "index": index, "text": piece})

        assert self.pump is not None
        pump = self.pump
        self._stream(show)

        def on_output(*args: Any) -> None:
            data = args[-1]
            stream = str(args[0]) if len(args) > 1 else "stdout"
            stream = stream if stream in captures else "stdout"
            if isinstance(data, bytes | bytearray):
                data = decoders[stream].feed(bytes(data))
            captures[stream].append(data)
            pump.feed(data)

        self.busy = True
        try:
            result = sandboxes.run_command(
                self.session,
                command,
                command_id=self.cell.command_id,
                admission=quotas.sandbox_admission(self.session),
                timeout_s=timeout_s,
                on_output=on_output,
            )
        finally:
            self.busy = False
            ended.set()
            for stream, decoder in decoders.items():
                tail = decoder.finish()
                captures[stream].append(tail)
                pump.feed(tail)
            self._stream(_discard)
        self.hold(
            COMMAND_FINISHED,
            {
                "call_id": call.call_id,
                "index": index,
                "outcome": result.outcome,
                "exit_code": result.exit_code,
                "duration_ms": int(result.duration_s * 1000),
            },
        )
        if result.outcome == "cancelled":
            raise TurnStopped(Cell.Status.CANCELLED, "cancelled")
        self._check_cancel()
        stdout, stderr = (captures[name].text() for name in ("stdout", "stderr"))
        if result.outcome == "timeout":
            return CommandOutput(stdout, stderr, "timeout")
        if result.outcome == "oom":
            stderr += "\n[killed: the command ran out of memory]"
        exit_code = result.exit_code if result.exit_code is not None else -1
        return CommandOutput(stdout, stderr, "exit", exit_code)

    def _await_approval(self, call: ShellCall, index: int, command: str) -> str:
        """Ask the session's people to approve ``command`` and wait for the decision.

        Returns "" when approved, otherwise the message the model gets instead of output.
        Raises TurnStopped when the cell is cancelled while waiting.
        """
        assert self.lease is not None
        approval, _ = CommandApproval.objects.get_or_create(
            cell=self.cell, call_id=call.call_id, index=index, defaults={"command": command}
        )
        if approval.status == CommandApproval.Status.PENDING:
            self.emit(
                APPROVAL_REQUESTED,
                {
                    "approval_id": approval.pk,
                    "session_id": self.session.pk,
                    "call_id": call.call_id,
                    "index": index,
                    "command": command,
                },
            )
        while approval.status == CommandApproval.Status.PENDING:
            # The lease's checks set ``cancelled``; waiting on it wakes at once on a cancel.
            if self.lease.cancelled.wait(settings.NOTEBOOK_CANCEL_POLL_S):
                self._check_cancel()
            approval.refresh_from_db()
        if approval.status == CommandApproval.Status.APPROVED:
            return ""
        who = approval.decided_by.username if approval.decided_by else "someone"
        reason = f": {approval.reason}" if approval.reason else " (no reason given)"
        return f"Not run: {who} rejected this command{reason}"


def session_agent_summary(session: Session) -> dict[str, Any]:
    """What the session header shows of the agent: approval mode and the context used after
    the latest model call (``context_tokens`` of ``context_window``). One query."""
    row = (
        Session.objects.filter(pk=session.pk)
        .annotate(
            latest=Subquery(
                Event.objects.filter(session_id=OuterRef("pk"), type=RESPONSE)
                .order_by("-seq")
                .values("payload")[:1],
                output_field=JSONField(),
            ),
            requires_approval=Exists(
                SessionAgent.objects.filter(session_id=OuterRef("pk"), requires_approval=True)
            ),
            provider_window=Subquery(
                ModelProvider.objects.filter(project_id=OuterRef("project_id")).values(
                    "context_window"
                )[:1]
            ),
        )
        .values("latest", "requires_approval", "provider_window")
        .get()
    )
    latest = row["latest"] or {}
    window = (
        latest.get("context_window")
        or row["provider_window"]
        or ModelProvider._meta.get_field("context_window").get_default()
    )
    return {
        "requires_approval": row["requires_approval"],
        "context_tokens": latest.get("context_tokens", 0),
        "context_window": window,
    }


def approval_required(session_id: int) -> bool:
    """Whether commands the model asks for in this session wait for a person's approval."""
    return SessionAgent.objects.filter(session_id=session_id, requires_approval=True).exists()


@transaction.atomic
def set_approval_mode(actor: Membership, session: Session, required: bool) -> None:
    """Turn approval mode of ``session`` on or off (members who can write); an event says so."""
    require(actor, write=True)
    if session.project.team_id != actor.team_id:
        raise Http404("No such session.")
    SessionAgent.objects.update_or_create(session=session, defaults={"requires_approval": required})
    append_event(
        session.pk,
        APPROVAL_MODE,
        {"required": required, "session_id": session.pk},
        actor=actor.user,
    )


@transaction.atomic
def decide_approval(
    actor: Membership, session: Session, approval_id: int, *, approve: bool, reason: str = ""
) -> CommandApproval:
    """Approve or reject a pending command of ``session`` (members who can write).

    Deciding twice changes nothing (the first decision stands). Raises Http404 for an
    approval of another session, PermissionDenied for reviewers.
    """
    require(actor, write=True)
    approval = CommandApproval.objects.filter(pk=approval_id, cell__session=session).first()
    if approval is None or session.project.team_id != actor.team_id:
        raise Http404("No such approval.")
    status = CommandApproval.Status.APPROVED if approve else CommandApproval.Status.REJECTED
    decided = CommandApproval.objects.filter(
        pk=approval.pk, status=CommandApproval.Status.PENDING
    ).update(
        status=status,
        reason=reason.strip()[:2000],
        decided_by=actor.user,
        decided_at=timezone.now(),
    )
    approval.refresh_from_db()
    if decided:
        append_event(
            session.pk,
            APPROVAL_DECIDED,
            {
                "approval_id": approval.pk,
                "call_id": approval.call_id,
                "index": approval.index,
                "status": approval.status,
                "reason": approval.reason,
                "by": actor.user.username,
            },
            cell=approval.cell_id,
            actor=actor.user,
        )
    return approval


def _transcript_line(item: HistoryItem) -> str:
    if isinstance(item, Message):
        return f"{item.role}: {item.text}"
    if isinstance(item, FunctionCall):
        return f"assistant called {item.name}: {item.arguments}"
    if isinstance(item, FunctionOutput):
        return f"result: {item.output}"
    if isinstance(item, ShellCall):
        return f"assistant ran: {' && '.join(item.commands) or item.arguments}"
    if item.error:
        return f"result: error: {item.error}"
    return "\n".join(
        f"result: {o.outcome} {o.exit_code if o.exit_code is not None else ''}\n"
        f"{o.stdout}{o.stderr}"
        for o in item.outputs
    )


def _discard(text: str) -> None:
    """The turn's output sink between model calls and commands (nothing is streaming)."""


def run_turn(cell: Cell) -> CellResult:
    """Run the agent turn of a claimed prompt cell: the runner the agents app registers for
    prompt cells (``execution.register_runner``)."""
    return Turn(cell).run()
