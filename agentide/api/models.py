"""The hosted runtime API: team API keys, and the containers (sessions) they drive."""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.utils import timezone

from agentide.accounts.models import Team, User
from agentide.projects.models import Project
from agentide.sessions.models import Session


class ApiKey(models.Model):
    """A team's key for ``/v1/``, scoped to one project. It acts as the member who created it.

    The secret is shown once, at creation; only its prefix (to find the row and to show in
    lists) and the sha256 of the whole key are stored.
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=32, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    created_by = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class ApiContainer(models.Model):
    """A container of the API (``cntr_…``): one session of the key's project, driven by the
    API. Its public id is random, never the session's pk."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        EXPIRED = "expired", "Expired"
        DELETED = "deleted", "Deleted"

    public_id = models.CharField(max_length=64, unique=True, editable=False)
    session = models.OneToOneField(Session, on_delete=models.CASCADE, related_name="api_container")
    key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="containers"
    )
    name = models.CharField(max_length=256)
    expires_after_minutes = models.PositiveIntegerField(default=20)
    memory_limit = models.CharField(max_length=8, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    created_at = models.DateTimeField(auto_now_add=True)
    last_active_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API container"
        indexes = [models.Index(fields=["status", "last_active_at"])]

    def __str__(self) -> str:
        return self.public_id

    @property
    def expires_at(self) -> dt.datetime:
        return self.last_active_at + dt.timedelta(minutes=self.expires_after_minutes)


class ContainerFile(models.Model):
    """A file of a container's ``/workspace`` as the API names it (``cfile_…``): uploaded
    through the API (source "user") or found there after commands made it ("assistant")."""

    class Source(models.TextChoices):
        USER = "user", "Uploaded"
        ASSISTANT = "assistant", "Made in the container"

    public_id = models.CharField(max_length=64, unique=True, editable=False)
    container = models.ForeignKey(ApiContainer, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=1024)  # relative to /workspace
    bytes = models.PositiveBigIntegerField(default=0)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.USER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["container", "path"], name="api_file_path_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.path})"


class ApiResponse(models.Model):
    """A ``POST /v1/responses`` request (``resp_…``): one prompt cell of its container's
    session. The Response object is not stored: it is the fold of the cell's events
    (``api.shapes``). A ``store: false`` response cannot be retrieved or chained through the
    API; its row and its cell stay (the team's record in the notebook)."""

    public_id = models.CharField(max_length=64, unique=True, editable=False)
    session = models.ForeignKey(Session, on_delete=models.CASCADE, related_name="api_responses")
    cell = models.OneToOneField(
        "notebook.Cell", on_delete=models.CASCADE, related_name="api_response"
    )
    key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="responses"
    )
    previous = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    store = models.BooleanField(default=True)
    background = models.BooleanField(default=False)
    model = models.CharField(max_length=200)
    instructions = models.TextField(blank=True)  # "": the project's own
    tools = models.JSONField(default=list)
    metadata = models.JSONField(default=dict)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API response"

    def __str__(self) -> str:
        return self.public_id
