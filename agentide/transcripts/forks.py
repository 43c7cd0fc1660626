"""Forks: a session's history up to one of its prompts copied into a new session, whose
prompts then replay on another model, and the turn-by-turn comparison of both runs."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.http import Http404
from django.utils import timezone

from agentide.accounts.models import Membership, User
from agentide.accounts.services import require
from agentide.agents.models import ModelProvider
from agentide.events import registry
from agentide.events.log import append_events
from agentide.events.models import Event
from agentide.projects.models import Project
from agentide.quotas import services as quotas
from agentide.sandboxes import checkpoints
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.models import Checkpoint
from agentide.sessions.execution import submit_cell
from agentide.sessions.models import Cell, Session
from agentide.sessions.services import create_session
from agentide.transcripts.models import Fork
from agentide.transcripts.services import get_transcript_for_user
from agentide.transcripts.view import AgentCommand, Block, TranscriptView, transcript_view

log = logging.getLogger(__name__)

# --- fork and replay ------------------------------------------------------------------------


def fork_targets(membership: Membership) -> list[tuple[Project, str]]:
    """The team's projects a fork may replay in, each with a label naming its model."""
    providers = {
        p.project_id: p for p in ModelProvider.objects.filter(project__team_id=membership.team_id)
    }
    targets = []
    for project in Project.objects.filter(team_id=membership.team_id).order_by("name"):
        provider = providers.get(project.pk)
        model = f"{provider.model} ({provider.get_kind_display()})" if provider else "no model"
        targets.append((project, f"{project.name} — {model}"))
    return targets


def fork_session(
    actor: Membership,
    session: Session,
    from_position: int,
    *,
    project: Project | None = None,
    title: str = "",
    replay: Callable[[int], object],
) -> Fork:
    """Fork ``session`` just before its prompt cell at ``from_position``.

    The new session (in ``project``, by default the same one) gets copies of the earlier
    cells and of their events, and of the session's other events before that prompt
    (comments are not copied; the agent's stored response ids are blanked, so the fork
    never chains into the original provider's state). After commit ``replay`` is called
    with the fork's session id: it enqueues the task that copies the workspace and
    re-submits the prompts from ``from_position`` on (``replay_fork``), which then run
    through the agent's turn loop against the fork's project's model.

    Writers only. Http404 for another team's session or project, or no prompt cell at
    ``from_position``; ValidationError while an earlier cell is still running.
    """
    require(actor, write=True)
    project = project or session.project
    if session.project.team_id != actor.team_id or project.team_id != actor.team_id:
        raise Http404("No such session.")
    prompt = Cell.objects.filter(
        session=session, position=from_position, kind=Cell.Kind.PROMPT
    ).first()
    if prompt is None:
        raise Http404("No such prompt cell.")
    earlier = list(
        Cell.objects.filter(session=session, position__lt=from_position).order_by("position")
    )
    if any(not cell.is_done for cell in earlier):
        raise ValidationError("An earlier cell is still running: fork once it has finished.")
    created_seq = (
        Event.objects.filter(session=session, cell=prompt, type=registry.CELL_CREATED)
        .values_list("seq", flat=True)
        .first()
    ) or 0
    title = (title.strip() or f"{session.title} · fork at #{from_position}")[:120]
    with transaction.atomic():
        forked = create_session(actor, project, title)
        copies: dict[int, Cell] = {}
        for cell in earlier:
            copies[cell.pk] = Cell.objects.create(
                session=forked,
                position=cell.position,
                kind=cell.kind,
                source=cell.source,
                author=cell.author,
                status=cell.status,
                outcome=cell.outcome,
                exit_code=cell.exit_code,
                error=cell.error,
                started_at=cell.started_at,
                finished_at=cell.finished_at,
                duration_ms=cell.duration_ms,
                output=cell.output,
                output_chars=cell.output_chars,
                output_truncated=cell.output_truncated,
            )
        history = (
            Event.objects.filter(session=session)
            .filter(Q(cell_id__in=list(copies)) | Q(cell__isnull=True, seq__lt=created_seq))
            .exclude(type__in=(registry.ANNOTATION_ADDED, registry.ANNOTATION_RESOLVED))
            .select_related("actor")
            .order_by("seq")
        )
        start = checkpoints.checkpoint_for_cell(prompt.pk, Checkpoint.Phase.BEFORE)
        if start is not None:
            checkpoints.pin_checkpoint(start)  # retention keeps what a fork starts from
        # The fork's first event says which files it starts from.
        copied: list[Event] = [
            Event(type=registry.WORKSPACE_FORKED, payload=_forked_payload(session, prompt, start),
                  actor=actor.user)
        ]
        times: list[dt.datetime] = [timezone.now()]
        # The earlier cells' checkpoints come along (rows naming the same stored files), so
        # the fork's log names checkpoints of its own.
        kept = checkpoints.copy_cell_checkpoints(
            forked, {old: new.pk for old, new in copies.items()})
        for event in history.iterator(chunk_size=1000):
            payload = dict(event.payload)
            copy = copies.get(event.cell_id) if event.cell_id else None
            if copy is not None and "cell_id" in payload:
                payload["cell_id"] = copy.pk
            if event.type == registry.CELL_CHECKPOINT and payload.get("checkpoint"):
                payload["checkpoint"] = kept.get(payload["checkpoint"])
            if event.type == registry.AGENT_RESPONSE and payload.get("response_id"):
                payload["response_id"] = ""
            copied.append(Event(type=event.type, payload=payload, cell=copy, actor=event.actor))
            times.append(event.created_at)
        # The fork was created in this transaction: nobody can be watching it yet.
        created = append_events(forked.pk, copied, publish_live=False)
        for new, at in zip(created, times, strict=True):
            new.created_at = at
        Event.objects.bulk_update(created, ["created_at"], batch_size=1000)
        for cell in earlier:
            copies[cell.pk].created_at = cell.created_at
        Cell.objects.bulk_update(list(copies.values()), ["created_at"], batch_size=500)
        fork = Fork.objects.create(
            session=forked,
            source=session,
            from_position=from_position,
            project=project,
            created_by=actor.user,
        )
        transaction.on_commit(lambda: replay(forked.pk))
    return fork


def _forked_payload(session: Session, prompt: Cell, start: Checkpoint | None) -> dict[str, Any]:
    ignored = [line.strip() for line in session.project.checkpoint_ignored_paths.splitlines()
               if line.strip() and not line.strip().startswith("#")]
    if start is None:
        message = (f"No checkpoint was taken before prompt #{prompt.position}: the workspace "
                   "is copied as the original's is now.")
    else:
        message = (f"The workspace starts from checkpoint {start.pk}, the files as they were "
                   f"before prompt #{prompt.position}.")
        if ignored:
            message += (" Ignored paths were not copied (" + ", ".join(ignored[:10])
                        + "): environments there are made again by running their commands.")
    return {"checkpoint": start.pk if start else None, "ignored": ignored[:50],
            "message": message}


def _fork_start(fork: Fork) -> Checkpoint | None:
    """The checkpoint taken before the fork's prompt in the original session, if any."""
    prompt = Cell.objects.filter(session=fork.source, position=fork.from_position).first()
    return checkpoints.checkpoint_for_cell(prompt.pk, Checkpoint.Phase.BEFORE) if prompt else None


def replay_fork(fork_session_id: int) -> str:
    """Give the fork's sandbox the source's files as they were before the fork's prompt (its
    "before" checkpoint; the source's workspace as it is now when it has none), then submit
    the source's prompts from the fork point on, in order, as the forking user (the agent's
    task runs them one after another).

    Idempotent: only a ``pending`` fork is replayed ("replayed"); a redelivered task finds
    it claimed and returns "skipped". A workspace that cannot be copied is recorded on the
    fork and the prompts run on an empty workspace.
    """
    claimed = Fork.objects.filter(session_id=fork_session_id, status=Fork.Status.PENDING).update(
        status=Fork.Status.REPLAYING
    )
    if not claimed:
        return "skipped"
    fork = Fork.objects.select_related("session__project", "source", "created_by").get(
        session_id=fork_session_id
    )
    membership = (
        Membership.objects.filter(team_id=fork.session.project.team_id, user=fork.created_by)
        .select_related("team", "user")
        .first()
    )
    if membership is None or not membership.can_write:
        Fork.objects.filter(pk=fork.pk).update(
            status=Fork.Status.FAILED, workspace_error="The forking member left the team."
        )
        return "failed"
    admission = quotas.sandbox_admission(fork.session)
    start = _fork_start(fork)
    try:
        if start is not None:
            checkpoints.populate_from_checkpoint(fork.session, start, admission=admission)
        else:
            sandboxes.copy_workspace(fork.source, fork.session, admission=admission)
    except Exception as exc:
        log.warning("copying the workspace of fork %s failed", fork.pk, exc_info=True)
        Fork.objects.filter(pk=fork.pk).update(workspace_error=str(getattr(exc, "message", exc)))
    else:
        Fork.objects.filter(pk=fork.pk).update(workspace_copied=True)
    prompts = Cell.objects.filter(
        session=fork.source, kind=Cell.Kind.PROMPT, position__gte=fork.from_position
    ).order_by("position")
    for prompt in prompts:
        submit_cell(membership, fork.session, Cell.Kind.PROMPT, prompt.source)
    return "replayed"


def get_fork_for_user(user: User, session_id: int) -> tuple[Fork, Membership]:
    """The fork record of session ``session_id`` (Http404 when it is no fork or not the
    user's team's) and the user's membership."""
    session, membership = get_transcript_for_user(user, session_id)
    fork = Fork.objects.filter(session=session).select_related("source__project").first()
    if fork is None or fork.source.project.team_id != membership.team_id:
        raise Http404("This session is not a fork.")
    return fork, membership


@dataclass
class TurnSide:
    """One run of a prompt, as the comparison shows it."""

    block: Block | None

    @property
    def commands(self) -> list[AgentCommand]:
        return self.block.agent_commands if self.block else []


@dataclass
class TurnPair:
    source: str
    original: TurnSide
    replay: TurnSide


@dataclass
class Comparison:
    fork: Fork
    original: TranscriptView
    replay: TranscriptView
    pairs: list[TurnPair]

    @property
    def original_model(self) -> str:
        return next(
            (
                p.original.block.model
                for p in self.pairs
                if p.original.block and p.original.block.model
            ),
            "",
        )

    @property
    def replay_model(self) -> str:
        return next(
            (p.replay.block.model for p in self.pairs if p.replay.block and p.replay.block.model),
            "",
        )

    def total(self, side: str, attr: str) -> Any:
        blocks = [getattr(p, side).block for p in self.pairs]
        return sum((getattr(b, attr) for b in blocks if b), Decimal(0) if attr == "cost" else 0)

    @property
    def totals(self) -> dict[str, dict[str, Any]]:
        return {
            side: {a: self.total(side, a) for a in ("input_tokens", "output_tokens", "cost")}
            for side in ("original", "replay")
        }


def compare_fork(fork: Fork) -> Comparison:
    """Pair the original's prompts from the fork point on with the fork's, turn by turn
    (by order: the fork re-submits them in the same order)."""
    original = transcript_view(fork.source)
    replay = transcript_view(fork.session)

    def prompts(view: TranscriptView) -> list[Block]:
        return [
            b
            for b in view.blocks
            if b.cell_kind == Cell.Kind.PROMPT and (b.position or 0) >= fork.from_position
        ]

    left, right = prompts(original), prompts(replay)
    pairs = []
    for index, block in enumerate(left):
        other = right[index] if index < len(right) else None
        pairs.append(
            TurnPair(source=block.source, original=TurnSide(block), replay=TurnSide(other))
        )
    return Comparison(fork=fork, original=original, replay=replay, pairs=pairs)
