"""Transcripts: what reviewers add to a session's record, and what makes it findable.

The event log stays the record. ``Annotation`` rows mirror ``annotation.*`` events so open
comments can be listed and counted cheaply; ``SearchEntry`` rows are a rebuildable full-text
index of the log (commands, outputs, prompts, answers, notes, comments); ``TranscriptImport``
and ``Fork`` remember where a session came from.
"""

from __future__ import annotations

from django.contrib.postgres.search import SearchVectorField
from django.db import models

from agentide.accounts.models import Team, User
from agentide.projects.models import Project
from agentide.sessions.models import Session


class Annotation(models.Model):
    """A comment on one event of a session (by its ``target_seq``).

    An annotation is identified in the log by ``seq``, the seq of its ``annotation.added``
    event, so exported transcripts carry annotations without database ids.
    """

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="annotations")
    seq = models.PositiveBigIntegerField()
    target_seq = models.PositiveBigIntegerField()
    author = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    # The author's name as recorded (an imported transcript's authors may not be users here).
    author_name = models.CharField(max_length=150, blank=True)
    body = models.TextField()
    resolved = models.BooleanField(default=False)
    resolved_by_name = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="transcripts_annotation_seq"),
        ]
        indexes = [models.Index(fields=["session", "target_seq"])]

    def __str__(self) -> str:
        return f"comment #{self.seq} on {self.session_id}#{self.target_seq}"


class SearchEntry(models.Model):
    """One searchable text of a session's log, pointing back at the event by ``seq``."""

    class Kind(models.TextChoices):
        COMMAND = "command", "Command"
        OUTPUT = "output", "Output"
        PROMPT = "prompt", "Prompt"
        ANSWER = "answer", "Answer"
        NOTE = "note", "Note"
        COMMENT = "comment", "Comment"

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    text = models.TextField()
    # Filled on PostgreSQL only (to_tsvector of ``text``), GIN-indexed by migration 0002.
    vector = SearchVectorField(null=True, blank=True)

    class Meta:
        ordering = ["session", "seq"]
        indexes = [models.Index(fields=["team", "session"])]

    def __str__(self) -> str:
        return f"{self.kind} at {self.session_id}#{self.seq}"


class SearchCursor(models.Model):
    """How far the search index has read a session's log."""

    session = models.OneToOneField(
        Session, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    indexed_seq = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"search index of {self.session_id} at {self.indexed_seq}"


class TranscriptImport(models.Model):
    """A session made from an imported JSONL transcript: read-only, its header kept."""

    session = models.OneToOneField(
        Session, on_delete=models.CASCADE, primary_key=True, related_name="transcript_import"
    )
    imported_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    imported_at = models.DateTimeField(auto_now_add=True)
    header = models.JSONField(default=dict)

    def __str__(self) -> str:
        return f"import into {self.session_id}"


class Fork(models.Model):
    """A session forked from ``source`` before the prompt cell at ``from_position``, whose
    later prompts are replayed (possibly in another project, against its model)."""

    session = models.OneToOneField(
        Session, on_delete=models.CASCADE, primary_key=True, related_name="fork"
    )
    source = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="forks")
    from_position = models.PositiveIntegerField()
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        REPLAYING = "replaying", "Replaying"
        FAILED = "failed", "Failed"

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    workspace_copied = models.BooleanField(default=False)
    workspace_error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"fork {self.session_id} of {self.source_id} at cell {self.from_position}"
