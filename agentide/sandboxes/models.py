"""The database's view of sandboxes: one row per session's container, plus warm-pool members.

The engine is the truth about what runs; this row is the truth about what *should* exist.
``services.reconcile`` brings the two together.
"""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.db.models import Q
from django.utils import timezone

from agentide.sandboxes.backends.base import SandboxHandle


class Sandbox(models.Model):
    """A session's container and workspace volume, or an unclaimed warm-pool member.

    A pool member has no session and state ``pooled``; claiming it sets ``session`` with a
    conditional UPDATE (so two workers never claim the same one). A session keeps its row
    for life: a destroyed or missing sandbox is re-created in place on the next need.
    """

    class State(models.TextChoices):
        POOLED = "pooled", "Pooled"
        CREATING = "creating", "Creating"
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"
        DESTROYED = "destroyed", "Destroyed"
        MISSING = "missing", "Missing"  # the container vanished behind our back
        ERROR = "error", "Error"

    LIVE = (State.POOLED, State.CREATING, State.RUNNING, State.STOPPED)

    session = models.OneToOneField(
        "notebook.Session",
        on_delete=models.SET_NULL,  # the reconciler removes the container of a deleted session
        null=True,
        blank=True,
        related_name="sandbox",
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.CREATING)
    container_id = models.CharField(max_length=80, blank=True, db_index=True)
    volume = models.CharField(max_length=200, blank=True)
    image = models.CharField(max_length=200)
    limits = models.JSONField(default=dict)  # SandboxLimits.as_dict() when created
    # Pool profile: hash of image + limits; set on pool members (and kept once claimed).
    profile = models.CharField(max_length=64, blank=True, db_index=True)
    # Reset when the container is re-created in place (max age counts from here).
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # When the sandbox was last in use. While a command runs it holds the command's
    # deadline, so a long command never looks idle.
    last_activity_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["state", "last_activity_at"]),
            models.Index(
                fields=["profile"], condition=Q(state="pooled"), name="sandboxes_pool_members"
            ),
        ]

    def __str__(self) -> str:
        owner = f"session {self.session_id}" if self.session_id else "pool"
        return f"sandbox {self.container_id[:12] or '-'} ({owner}, {self.state})"

    @property
    def handle(self) -> SandboxHandle:
        return SandboxHandle(container_id=self.container_id, volume=self.volume)

    @property
    def has_container(self) -> bool:
        return bool(self.container_id) and self.state in (self.State.RUNNING, self.State.STOPPED,
                                                          self.State.POOLED)

    def is_idle(self, now: dt.datetime, idle_after: dt.timedelta) -> bool:
        """True for a running sandbox unused for longer than ``idle_after``."""
        if self.state != self.State.RUNNING:
            return False
        last = self.last_activity_at or self.started_at or self.created_at
        return last < now - idle_after

    def is_past_max_age(self, now: dt.datetime, max_age: dt.timedelta) -> bool:
        return self.created_at < now - max_age


class Checkpoint(models.Model):
    """The files of a session's /workspace at one moment: a manifest (blob ``manifest`` in the
    host-side store of ``agentide.sandboxes.checkpoints``) naming every file, directory and
    symlink with its content's sha256. Made only by that module; rows are never edited
    except ``pinned``.

    ``cell`` and ``phase`` say which cell it was taken for ("before" it ran, "after" it
    ended); a checkpoint taken for something else (a restore's undo point of a fork, an
    import) may have neither.
    """

    class Phase(models.TextChoices):
        BEFORE = "before", "Before"
        AFTER = "after", "After"

    session = models.ForeignKey(
        "notebook.Session", on_delete=models.CASCADE, related_name="checkpoints"
    )
    cell = models.ForeignKey(
        "notebook.Cell", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    phase = models.CharField(max_length=8, choices=Phase.choices, blank=True)
    reason = models.CharField(max_length=200, blank=True)
    manifest = models.CharField(max_length=64)  # sha256 of the stored manifest blob
    files = models.PositiveIntegerField(default=0)  # entries of any kind
    bytes = models.PositiveBigIntegerField(default=0)  # total size of the regular files
    added_bytes = models.PositiveBigIntegerField(default=0)  # bytes it newly stored
    # The sandbox's clock when the scan began: the next scan brings back the files changed
    # since then in the same round trip.
    scan_clock = models.CharField(max_length=32, blank=True)
    # Kept by retention whatever its age (a fork started from it, someone pointed at it).
    pinned = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["session", "-id"])]
        constraints = [
            models.UniqueConstraint(
                fields=["cell", "phase"], condition=Q(cell__isnull=False),
                name="sandboxes_checkpoint_cell_phase",
            ),
        ]

    def __str__(self) -> str:
        return f"checkpoint {self.pk} of session {self.session_id} ({self.files} entries)"
