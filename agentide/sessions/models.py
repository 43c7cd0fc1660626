"""Sessions: a shared notebook in a project, with its own sandbox container.

A session's history is its ``Event`` log (``agentide.events``): rows with a per-session,
gap-free ``seq`` appended only through ``agentide.events.log.append_event``. ``Cell`` rows hold
the current state of each cell (status, exit code, the stored output) so work can be claimed
and queried cheaply; every change to a cell is also an event.
"""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.db.models import Q
from django.utils import timezone

from agentide.accounts.models import Membership, User
from agentide.events.log import session_group
from agentide.projects.models import Project


class Session(models.Model):
    """A notebook that a team works in together; its container lives across turns."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        ENDED = "ended", "Ended"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="sessions")
    title = models.CharField(max_length=120)
    created_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    last_activity_at = models.DateTimeField(auto_now_add=True)
    # The seq of the newest event. Only append_event changes it, under the row's lock.
    last_seq = models.PositiveBigIntegerField(default=0)
    # Made from an imported transcript: every page shows it as such whatever its title says.
    imported = models.BooleanField(default=False, editable=False)
    # Opened through the API (/v1/containers): the name of the key that drives it ("" = no).
    api_key_name = models.CharField(max_length=80, blank=True, editable=False)

    class Meta:
        ordering = ["-last_activity_at"]
        indexes = [models.Index(fields=["project", "-last_activity_at"])]

    def __str__(self) -> str:
        return self.title

    @property
    def team_id(self) -> int:
        return self.project.team_id

    def deletable_by(self, membership: Membership) -> bool:
        """Owners and admins delete any session of their team; members the ones they opened."""
        return (
            membership.team_id == self.project.team_id
            and membership.can_write
            and (membership.can_manage or self.created_by_id == membership.user_id)
        )

    @property
    def group_name(self) -> str:
        """The channel-layer group of this session's viewers (built from the pk only)."""
        return session_group(self.pk)


class Cell(models.Model):
    """One entry of the notebook: a shell command, a prompt to the agent, or a note."""

    class Kind(models.TextChoices):
        SHELL = "shell", "Shell"
        PROMPT = "prompt", "Agent"
        NOTE = "note", "Note"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        INTERRUPTED = "interrupted", "Interrupted"

    DONE = (Status.FINISHED, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED)

    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="cells")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    source = models.TextField()
    author = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    outcome = models.CharField(max_length=16, blank=True)  # exit | timeout | cancelled | oom
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # Stored output: head + tail of everything the command printed; total size recorded.
    output = models.TextField(blank=True)
    output_chars = models.PositiveBigIntegerField(default=0)
    output_truncated = models.BooleanField(default=False)
    # A running cell belongs to a worker while its lease is fresh; the worker renews it.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    cancel_requested = models.BooleanField(default=False)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["session", "position"], name="notebook_cell_position"),
        ]
        indexes = [
            models.Index(fields=["session", "status"]),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="running"),
                name="notebook_cell_running_lease",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} cell {self.position} of session {self.session_id}"

    @property
    def is_done(self) -> bool:
        return self.status in self.DONE

    @property
    def command_id(self) -> str:
        """The sandbox command id of this cell's command (for cancel)."""
        return f"cell-{self.pk}"

    def lease_expired(self, now: dt.datetime) -> bool:
        return self.lease_expires_at is not None and self.lease_expires_at < now

    def renew_lease(self, seconds: float) -> bool:
        """Extend the running cell's lease to ``seconds`` from now, in the database only.
        Returns False when the cell is no longer running (finished, or taken over)."""
        updated = Cell.objects.filter(pk=self.pk, status=Cell.Status.RUNNING).update(
            lease_expires_at=timezone.now() + dt.timedelta(seconds=seconds)
        )
        return bool(updated)

