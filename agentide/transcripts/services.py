"""Transcript workflows on a session: who may read it, and its comments.

Everything in this app reads the event log; the only writes to it go through
``agentide.events.log.append_event``. Access goes through ``get_transcript_for_user``: every
member of the session's team may read and annotate (reviewers included); other writes need a
writer. The other verb families live beside this module: ``view`` (the reviewer's page),
``exchange`` (export and import), ``search``, ``forks`` (fork and replay on another model).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404

from agentide.accounts.models import Membership, User
from agentide.events import registry
from agentide.events.log import append_event
from agentide.events.models import Event
from agentide.sandboxes.models import Checkpoint
from agentide.sessions.models import Session
from agentide.sessions.services import get_session_for_user
from agentide.transcripts.models import Annotation, TranscriptImport

# --- access -----------------------------------------------------------------------------------


def get_transcript_for_user(
    user: User, session_id: int, *, write: bool = False
) -> tuple[Session, Membership]:
    """The session and the user's membership, for reading its transcript or annotating it
    (any member of the team, reviewers included). ``write`` (forking) needs a writer.

    Raises Http404 for sessions of other teams exactly as for missing ones, and
    PermissionDenied when ``write`` is asked of a reviewer.
    """
    return get_session_for_user(user, session_id, write=write)


def is_read_only(session: Session) -> bool:
    """True for sessions made by importing a transcript: nothing may run in them."""
    return TranscriptImport.objects.filter(session_id=session.pk).exists()


def can_be_forked(session: Session) -> bool:
    """Sessions made here, and imported ones that brought their checkpoint bundle: a fork
    starts from the files as they were before its prompt."""
    return not is_read_only(session) or Checkpoint.objects.filter(session_id=session.pk).exists()


# --- annotations ------------------------------------------------------------------------------


@transaction.atomic
def add_annotation(actor: Membership, session: Session, target_seq: int, body: str) -> Annotation:
    """Comment on the event ``target_seq`` of ``session``: appends ``annotation.added`` (on
    the target's cell, so it shows there live) and records the comment.

    Any member of the session's team may comment, reviewers included. Raises Http404 for
    another team's session or an event that does not exist, ValidationError for an empty
    or too long comment.
    """
    if actor.team_id != session.project.team_id:
        raise Http404("No such session.")
    body = body.strip()
    limit = settings.TRANSCRIPT_MAX_COMMENT_CHARS
    if not body:
        raise ValidationError({"body": "Write a comment first."})
    if len(body) > limit:
        raise ValidationError({"body": f"Keep comments under {limit} characters."})
    if "\x00" in body:
        raise ValidationError({"body": "The comment contains a NUL character."})
    target = Event.objects.filter(session=session, seq=target_seq).only("cell_id", "type").first()
    if target is None or target.type in (registry.ANNOTATION_ADDED, registry.ANNOTATION_RESOLVED):
        raise Http404("No such event.")
    event = append_event(
        session.pk,
        registry.ANNOTATION_ADDED,
        {"target_seq": target_seq, "body": body},
        cell=target.cell_id,
        actor=actor.user,
    )
    return Annotation.objects.create(
        session=session,
        seq=event.seq,
        target_seq=target_seq,
        author=actor.user,
        author_name=actor.user.username,
        body=body,
        created_at=event.created_at,
    )


def get_annotation(session: Session, annotation_seq: int) -> Annotation:
    annotation = Annotation.objects.filter(session=session, seq=annotation_seq).first()
    if annotation is None:
        raise Http404("No such comment.")
    return annotation


@transaction.atomic
def set_annotation_resolved(
    actor: Membership, session: Session, annotation_seq: int, resolved: bool
) -> Annotation:
    """Mark a comment resolved (or open again) and append ``annotation.resolved``.

    Any member of the team may do this. A comment already in the asked state changes
    nothing and appends nothing.
    """
    if actor.team_id != session.project.team_id:
        raise Http404("No such session.")
    annotation = get_annotation(session, annotation_seq)
    changed = Annotation.objects.filter(pk=annotation.pk, resolved=not resolved).update(
        resolved=resolved, resolved_by_name=actor.user.username if resolved else ""
    )
    if changed:
        target_cell = (
            Event.objects.filter(session=session, seq=annotation.target_seq)
            .values_list("cell_id", flat=True)
            .first()
        )
        append_event(
            session.pk,
            registry.ANNOTATION_RESOLVED,
            {
                "annotation_seq": annotation.seq,
                "target_seq": annotation.target_seq,
                "resolved": resolved,
            },
            cell=target_cell,
            actor=actor.user,
        )
        annotation.refresh_from_db()
    return annotation
