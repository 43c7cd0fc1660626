"""Sessions: a shared notebook in a project, with its own sandbox container."""

from __future__ import annotations

from django.db import models

from agentide.accounts.models import User
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

    class Meta:
        ordering = ["-last_activity_at"]
        indexes = [models.Index(fields=["project", "-last_activity_at"])]

    def __str__(self) -> str:
        return self.title

    @property
    def team_id(self) -> int:
        return self.project.team_id
