"""Agent workflows: provider settings and their access helper, and the turn loop.

A turn runs one prompt cell: model call -> shell calls run in the session's sandbox -> outputs
back -> ... until a final answer, the step limit, an error or a cancel. Everything it does is
an event of the cell (``agent.*`` types) appended through the notebook's ``append_event``;
the model's input is rebuilt from those events and the session's other cells every step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Exists, JSONField, OuterRef, Q, Subquery
from django.http import Http404
from django.utils import timezone

from agentide.accounts.models import Membership, User
from agentide.accounts.services import require
from agentide.agents.backends.base import (
    CommandOutput,
    HistoryItem,
    Message,
    ModelBackend,
    ModelCallCancelled,
    ModelError,
    ModelReply,
    ProviderConfig,
    ShellCall,
    ShellResult,
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
from agentide.lib.output import CappedOutput, StreamDecoder
from agentide.lib.sealed import SealError
from agentide.projects.models import Project
from agentide.projects.services import get_project_for_user
from agentide.quotas import services as quotas
from agentide.sandboxes import services as sandboxes
from agentide.sessions.models import Cell, Event, Session
from agentide.sessions.services import OutputPump, append_event, finish_cell, start_cell

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

TEXT = "agent.text"
MESSAGE = "agent.message"
REQUEST = "agent.request"
RESPONSE = "agent.response"
TOOL_CALL = "agent.tool_call"
COMMAND_STARTED = "agent.command_started"
OUTPUT = "agent.output"
COMMAND_FINISHED = "agent.command_finished"
TOOL_RESULT = "agent.tool_result"
COMPACTION = "agent.compaction"
ERROR = "agent.error"
TURN_FINISHED = "agent.turn_finished"
APPROVAL_MODE = "agent.approval_mode"
APPROVAL_REQUESTED = "agent.approval_requested"
APPROVAL_DECIDED = "agent.approval_decided"

CHARS_PER_TOKEN = 4
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


def build_transcript(session_id: int, current: Cell) -> Transcript:
    """Rebuild the model's input from the session's finished cells before ``current`` (shell
    cells people ran and their output, notes, other prompts with the agent's steps) and the
    events of ``current`` so far. The latest compaction replaces everything it covered.
    Calls left without an answer (a cancelled turn) get an error answer so the input stays
    valid for strict APIs."""
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
            items.append(Message("user", f"[Prompt from {who}]\n{cell.source}"))
            _append_turn_items(transcript, cell)
    return transcript


def _append_turn_items(transcript: Transcript, cell: Cell) -> None:
    items = transcript.items
    open_calls: dict[str, ShellCall] = {}
    events = Event.objects.filter(
        cell=cell, type__in=(MESSAGE, TOOL_CALL, TOOL_RESULT, RESPONSE)
    ).order_by("seq")
    for type_, payload in events.values_list("type", "payload"):
        if type_ == MESSAGE and payload.get("text"):
            items.append(Message("assistant", payload["text"]))
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
    """Shorten tool outputs and shell-cell messages except the last ``keep_last`` items to
    ``limit`` characters each (in place); return how many were shortened."""
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


class _Watch:
    """While a turn runs: renews the prompt cell's lease and notices cancel requests.

    ``cancelled`` is set when someone asks to cancel the cell or the cell stops being
    ``running``; from then on ``on_cancel`` (kill the command) is called at every poll while
    ``busy()`` says a command runs, so a command that was still starting when the cancel
    came is killed too.
    """

    def __init__(
        self, cell: Cell, on_cancel: Callable[[], object], busy: Callable[[], bool]
    ) -> None:
        self.cell = cell
        self.cancelled = threading.Event()
        self._on_cancel = on_cancel
        self._busy = busy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="turn-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lease = settings.NOTEBOOK_LEASE_S
        renew_every = max(1.0, lease / 3)
        next_renew = time.monotonic() + renew_every
        try:
            while not self._stop.wait(settings.NOTEBOOK_CANCEL_POLL_S):
                row = (
                    Cell.objects.filter(pk=self.cell.pk)
                    .values("status", "cancel_requested")
                    .first()
                )
                gone = row is None or row["status"] != Cell.Status.RUNNING
                if gone or (row and row["cancel_requested"]):
                    self.cancelled.set()
                if self.cancelled.is_set() and self._busy():
                    self._on_cancel()
                if not gone and time.monotonic() >= next_renew:
                    self.cell.renew_lease(lease)
                    next_renew = time.monotonic() + renew_every
        except Exception:
            log.exception("watch of prompt cell %s failed", self.cell.pk)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def claim_prompt_cell(cell_id: int, *, worker: str = "") -> Cell | None:
    """Claim the queued prompt cell ``cell_id`` when it is next in its session.

    Returns the cell (now ``running``, leased) or None when it cannot run yet (another cell
    of the session runs or an earlier cell is queued) or is not queued any more (already
    claimed, cancelled, done). Safe against concurrent and redelivered tasks: the claim is
    a conditional update under the session row's lock.
    """
    cell = Cell.objects.filter(pk=cell_id, kind=Cell.Kind.PROMPT).first()
    if cell is None or cell.status != Cell.Status.QUEUED:
        return None
    with transaction.atomic():
        now = timezone.now()
        Session.objects.filter(pk=cell.session_id).update(last_activity_at=now)
        busy = Cell.objects.filter(session_id=cell.session_id).filter(
            Q(status=Cell.Status.RUNNING) | Q(status=Cell.Status.QUEUED, position__lt=cell.position)
        )
        if busy.exists():
            return None
        if not start_cell(cell, worker=worker, now=now):
            return None
    return cell


def prompt_cell_waiting(cell_id: int) -> bool:
    """True while the prompt cell is still queued (its task should try again later)."""
    return Cell.objects.filter(pk=cell_id, status=Cell.Status.QUEUED).exists()


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
        self.watch: _Watch | None = None
        self.busy = False  # a model call or a command of this turn is under way
        self.compactions = 0
        self.backend: ModelBackend | None = None

    # events
    def emit(self, type_: str, payload: dict[str, Any]) -> None:
        append_event(self.session.pk, type_, payload, cell=self.cell)

    def run(self) -> None:
        """Run the turn to its end and record it on the cell (never raises for model,
        sandbox or cancel trouble: those end the turn with a readable error)."""
        self.watch = _Watch(self.cell, on_cancel=self._kill_command, busy=lambda: self.busy)
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
            self.watch.stop()
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
        finish_cell(self.cell, status=status, outcome=reason, error=error)
        transaction.on_commit(lambda: dispatch_next_cell(self.session.pk))

    def _cancel_requested(self) -> bool:
        return (
            bool(self.watch and self.watch.cancelled.is_set())
            or Cell.objects.filter(pk=self.cell.pk, cancel_requested=True).exists()
        )

    def _kill_command(self) -> None:
        if self.backend is not None:
            self.backend.abort()
        try:
            sandboxes.cancel_command(self.session, self.cell.command_id)
        except Exception:
            log.warning("cancelling %s failed", self.cell.command_id, exc_info=True)

    def _check_cancel(self) -> None:
        # The watch thread polls the cell; asking it costs no query on every step.
        if self.watch is not None and self.watch.cancelled.is_set():
            raise TurnStopped(Cell.Status.CANCELLED, "cancelled")

    def _loop(self) -> None:
        if self.provider.pk is None:
            raise ModelError(NO_PROVIDER_MESSAGE, permanent=True)
        backend = self.backend = self.backend_factory(provider_config(self.provider))
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
                reply = self._call_model(backend, items, previous)
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
                if reply.response_id:
                    transcript.chain_id = reply.response_id
                    transcript.chain_from = len(transcript.items)
                    transcript.chain_tokens = reply.usage.input_tokens + reply.usage.output_tokens
            if not reply.calls:
                return
            results = self._run_calls(reply.calls)
            if transcript is not None:
                transcript.items.extend(results)

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
        earlier = []
        for item in transcript.items:
            if (
                isinstance(item, Message)
                and item.text.startswith("[Prompt from")
                and (item.text == f"[Prompt from {self._author()}]\n{self.cell.source}")
            ):
                break
            earlier.append(item)
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

    def _author(self) -> str:
        return self.cell.author.username if self.cell.author else "someone"

    def _account(self, usage: Usage, *, purpose: str) -> dict[str, Any]:
        payload = record_usage(self.cell, self.provider, usage, purpose=purpose)
        for name, value in usage.as_dict().items():
            setattr(self.totals, name, getattr(self.totals, name) + value)
        self.cost += Decimal(payload["cost"])
        return payload

    def _call_model(
        self, backend: ModelBackend, items: list[HistoryItem], previous: str
    ) -> ModelReply:
        # A reply that arrives whole before the first flush needs no agent.text event: the
        # agent.message written right after carries the same text.
        live = {"emitted": False, "complete": False}

        def show(text: str) -> None:
            if live["complete"] and not live["emitted"]:
                return
            live["emitted"] = True
            self.emit(TEXT, {"step": self.steps, "text": text})

        pump = OutputPump(
            show,
            interval_s=settings.NOTEBOOK_OUTPUT_FLUSH_MS / 1000,
            max_chars=settings.NOTEBOOK_OUTPUT_FLUSH_CHARS,
        )
        assert self.watch is not None
        cancelled = self.watch.cancelled
        self.busy = True
        try:
            reply = backend.respond(
                items,
                previous_response_id=previous,
                on_text=pump.feed,
                should_stop=cancelled.is_set,
            )
            live["complete"] = True
            pump.close()
        except ModelCallCancelled as exc:
            pump.close()
            if exc.partial_text:
                self.emit(MESSAGE, {"step": self.steps, "text": exc.partial_text, "partial": True})
            raise TurnStopped(Cell.Status.CANCELLED, "cancelled") from None
        finally:
            self.busy = False
            pump.close()
        usage = self._account(reply.usage, purpose="turn")
        with transaction.atomic():
            if reply.text:
                self.emit(MESSAGE, {"step": self.steps, "text": reply.text})
            for call in reply.calls:
                self.emit(
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
            self.emit(
                RESPONSE,
                {
                    "step": self.steps,
                    "response_id": reply.response_id,
                    "usage": usage,
                    "calls": len(reply.calls),
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
            self.emit(TOOL_RESULT, _result_payload(result))
            results.append(result)
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

        def show(text: str) -> None:
            piece = text[: max(0, live_budget[0])]
            live_budget[0] -= len(text)
            if piece:
                self.emit(OUTPUT, {"call_id": call.call_id, "index": index, "text": piece})

        pump = OutputPump(
            show,
            interval_s=settings.NOTEBOOK_OUTPUT_FLUSH_MS / 1000,
            max_chars=settings.NOTEBOOK_OUTPUT_FLUSH_CHARS,
        )

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
                timeout_s=timeout_s,
                on_output=on_output,
            )
        finally:
            self.busy = False
            for stream, decoder in decoders.items():
                tail = decoder.finish()
                captures[stream].append(tail)
                pump.feed(tail)
            pump.close()
        self.emit(
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
        assert self.watch is not None
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
            # The watch thread sets ``cancelled``; waiting on it wakes at once on a cancel.
            if self.watch.cancelled.wait(settings.NOTEBOOK_CANCEL_POLL_S):
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
    if isinstance(item, ShellCall):
        return f"assistant ran: {' && '.join(item.commands) or item.arguments}"
    if item.error:
        return f"result: error: {item.error}"
    return "\n".join(
        f"result: {o.outcome} {o.exit_code if o.exit_code is not None else ''}\n"
        f"{o.stdout}{o.stderr}"
        for o in item.outputs
    )


def run_prompt_cell(
    cell_id: int,
    *,
    worker: str = "",
    backend_factory: Callable[[ProviderConfig], ModelBackend] | None = None,
) -> str:
    """Claim and run the prompt cell ``cell_id``.

    Returns "ran" when this call ran the turn, "waiting" when the cell is still queued behind
    another cell (call again later), "skipped" when it is not queued any more (claimed by
    another worker, cancelled or done: a redelivered task ends here).
    """
    cell = claim_prompt_cell(cell_id, worker=worker)
    if cell is None:
        return "waiting" if prompt_cell_waiting(cell_id) else "skipped"
    Turn(cell, backend_factory=backend_factory).run()
    return "ran"


def dispatch_next_cell(session_id: int) -> None:
    """After a turn: queue the work of the session's next queued cell (the shell queue, or
    the next prompt's task)."""
    from agentide.agents.tasks import run_prompt_cell as prompt_task
    from agentide.sessions.tasks import run_shell_cells

    nxt = (
        Cell.objects.filter(session_id=session_id, status=Cell.Status.QUEUED)
        .order_by("position")
        .values("pk", "kind")
        .first()
    )
    if nxt is None:
        return
    if nxt["kind"] == Cell.Kind.PROMPT:
        prompt_task.delay(nxt["pk"])
    else:
        run_shell_cells.delay(session_id)
