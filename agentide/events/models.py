"""The ``Event`` row: one thing that happened in a session.

The table is still ``notebook_event`` (the model moved here from the sessions app without
touching the database). Session, Cell and User are referenced by name so that this floor
imports nothing from the apps above it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Event(models.Model):
    """One thing that happened in a session. Append-only; ``seq`` is gap-free per session.

    ``type`` is one of the names declared in ``agentide.events.registry``.
    """

    session = models.ForeignKey("notebook.Session", on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveBigIntegerField()
    type = models.CharField(max_length=40)
    payload = models.JSONField(default=dict)
    cell = models.ForeignKey(
        "notebook.Cell", on_delete=models.CASCADE, null=True, blank=True, related_name="events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "notebook_event"
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="notebook_event_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.seq} {self.type}"
