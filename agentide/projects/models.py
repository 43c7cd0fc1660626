"""Projects group a team's sessions and hold their defaults."""

from __future__ import annotations

from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Lower

from agentide.accounts.models import Team, User


class Project(models.Model):
    """A team's project. Its sandbox fields are defaults for every session's container,
    clamped at run time to the ceilings an admin sets (settings and quotas)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=80)
    slug = models.SlugField(max_length=80)
    description = models.TextField(blank=True, max_length=2000)
    created_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    sandbox_image = models.CharField(
        max_length=200, blank=True, help_text="Docker image tag; blank uses the site default."
    )
    sandbox_memory_mb = models.PositiveIntegerField(
        default=1024,
        validators=[MinValueValidator(64), MaxValueValidator(65536)],
        help_text="Memory limit (swap included) in MiB.",
    )
    sandbox_cpus = models.DecimalField(
        max_digits=4,
        decimal_places=2,
        default=Decimal("1.00"),
        validators=[MinValueValidator(Decimal("0.10")), MaxValueValidator(Decimal("64"))],
        help_text="CPU quota in cores.",
    )
    sandbox_pids_limit = models.PositiveIntegerField(
        default=256,
        validators=[MinValueValidator(16), MaxValueValidator(32768)],
        help_text="Maximum number of processes in the container.",
    )
    sandbox_tmp_mb = models.PositiveIntegerField(
        default=256,
        validators=[MinValueValidator(16), MaxValueValidator(16384)],
        help_text="Size of the /tmp tmpfs in MiB.",
    )
    sandbox_disk_mb = models.PositiveIntegerField(
        "Workspace size (MiB)",
        default=1024,
        validators=[MinValueValidator(16), MaxValueValidator(1_048_576)],
        help_text="Size limit of /workspace in MiB (at most the site's maximum).",
    )
    command_timeout_s = models.PositiveIntegerField(
        default=600,
        validators=[MinValueValidator(1), MaxValueValidator(86400)],
        help_text="Default timeout of one command, in seconds.",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "slug"], name="projects_project_slug_unique"),
            models.UniqueConstraint(
                "team",
                Lower("name"),
                name="projects_project_name_ci_unique",
                violation_error_message="This team already has a project with this name.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.team.slug}/{self.slug}"
