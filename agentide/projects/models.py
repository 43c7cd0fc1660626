"""Projects group a team's sessions and hold their defaults."""

from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Lower

from agentide.accounts.models import Team, User

MAX_IGNORE_PATTERNS = 100


def parse_ignored_paths(text: str) -> list[tuple[str, bool, bool]]:
    """A project's ignored paths (one ``.gitignore``-like pattern a line; blank lines and
    ``#`` comments skipped) as (glob, anchored, directories only): a name matches at any
    depth, a leading ``/`` or an inner ``/`` anchors it at /workspace, a trailing ``/``
    matches directories only. Raises ValidationError for a line that is no pattern."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > 200 or any(ord(c) < 0x20 for c in line):
            raise ValidationError(f"{line[:40]!r}: a pattern is one line of at most 200 "
                                  "characters.")
        body = line.strip("/")
        if not body or any(part in (".", "..", "") for part in body.split("/")):
            raise ValidationError(f"{line!r} is not a path pattern.")
        patterns.append((body, line.startswith("/") or "/" in body, line.endswith("/")))
    if len(patterns) > MAX_IGNORE_PATTERNS:
        raise ValidationError(f"At most {MAX_IGNORE_PATTERNS} ignored paths are allowed.")
    return patterns


def validate_ignored_paths(text: str) -> None:
    parse_ignored_paths(text)


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

    # Workspace checkpoints (agentide/sandboxes/checkpoints.py).
    checkpoints_enabled = models.BooleanField(
        "Workspace checkpoints", default=True,
        help_text="Keep the files of /workspace before every cell and after every turn.",
    )
    checkpoint_ignored_paths = models.TextField(
        "Paths not checkpointed",
        blank=True,
        default=".venv/\nnode_modules/\n__pycache__/\n.cache/\n.agentide/",
        max_length=4000,
        validators=[validate_ignored_paths],
        help_text="One pattern a line, as in .gitignore: a name matches at any depth, a "
        "leading / anchors it at /workspace, a trailing / matches directories only. These "
        "are neither checkpointed nor touched by a restore.",
    )
    checkpoint_keep_last = models.PositiveIntegerField(
        "Checkpoints kept (last N)", default=200,
        validators=[MinValueValidator(1), MaxValueValidator(100_000)],
        help_text="A session's newest checkpoints always kept.",
    )
    checkpoint_keep_days = models.PositiveIntegerField(
        "Checkpoints kept (days)", default=30,
        validators=[MinValueValidator(0), MaxValueValidator(3650)],
        help_text="Older checkpoints beyond the last N are removed (pinned ones stay).",
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
