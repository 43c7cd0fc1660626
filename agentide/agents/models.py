"""Model provider settings of a project (and, with the turn loop, the state of agent turns)."""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import (
    MaxValueValidator,
    MinValueValidator,
    RegexValidator,
)
from django.db import models

from agentide.agents.backends.egress import EgressPolicy
from agentide.lib.sealed import seal, unseal
from agentide.projects.models import Project

ENV_NAME = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]*$", "Use an environment variable name (letters, digits, _)."
)
_PER_MILLION = Decimal(1_000_000)
DEFAULT_MODEL_HOST = "api.openai.com"


def validate_base_url(url: str) -> None:
    """http(s) URL with a host; unlike URLValidator, single-label hosts (``http://vllm:8000``,
    a compose service) are fine."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http:// or https:// URL with a host name.")
    try:
        parts.port  # noqa: B018 - raises for an invalid port
    except ValueError:
        raise ValidationError("The port in this URL is not valid.") from None


def model_host(url: str) -> str:
    """The host model requests for ``url`` go to (a blank URL means the OpenAI API)."""
    return (urlsplit(url).hostname or "").lower() if url else DEFAULT_MODEL_HOST


def base_url_allowed(url: str) -> bool:
    """Whether the site lets projects send model requests to ``url``'s host
    (``AGENTIDE_MODEL_ALLOWED_HOSTS``; empty allows any host). Redirects are never followed
    and the addresses are checked at request time (``backends/egress.py``)."""
    allowed = settings.AGENTIDE_MODEL_ALLOWED_HOSTS
    if not url or not allowed:
        return True
    return model_host(url) in {h.lower() for h in allowed}


def site_egress_policy() -> EgressPolicy:
    """The site's exceptions to "model requests reach public addresses only"."""
    return EgressPolicy(
        private_networks=tuple(settings.AGENTIDE_MODEL_PRIVATE_NETWORKS),
        private_hosts=tuple(settings.AGENTIDE_MODEL_PRIVATE_HOSTS),
    )


def literal_address_allowed(url: str) -> bool:
    """False when ``url`` names an IP address the site refuses (names are checked when each
    request is sent, after resolution)."""
    host = model_host(url)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True
    return site_egress_policy().allows(host, address)


def site_key_allowed(url: str) -> bool:
    """Whether the site's own API keys (``api_key_env``) may be sent to ``url``'s host
    (``AGENTIDE_MODEL_KEY_HOSTS``)."""
    return model_host(url) in {h.lower() for h in settings.AGENTIDE_MODEL_KEY_HOSTS}


class ModelProvider(models.Model):
    """How a project's agent reaches its model: API kind, endpoint, key, limits and prices.

    The API key is either the *name* of an environment variable of the worker processes
    (``api_key_env``) or a key sealed at rest (``api_key_sealed``); it is never rendered back
    and never passed to a sandbox.
    """

    class Kind(models.TextChoices):
        RESPONSES = "responses", "OpenAI Responses API (native shell tool)"
        CHAT_COMPLETIONS = "chat_completions", "Chat Completions (any OpenAI-compatible server)"

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="model_provider")
    kind = models.CharField(max_length=24, choices=Kind.choices, default=Kind.RESPONSES)
    base_url = models.CharField(
        "Base URL",
        max_length=300,
        blank=True,
        validators=[validate_base_url],
        help_text="Blank uses api.openai.com; e.g. http://vllm:8000/v1 for a compatible server.",
    )
    model = models.CharField(max_length=120, default="gpt-5.1")
    api_key_env = models.CharField(
        "API key environment variable",
        max_length=100,
        blank=True,
        validators=[ENV_NAME],
        help_text="Name of a variable set in the worker's environment, e.g. OPENAI_API_KEY.",
    )
    api_key_sealed = models.TextField(blank=True, editable=False)
    stores_responses = models.BooleanField(
        "Provider stores responses",
        default=True,
        help_text="Chain turns with previous_response_id (Responses API only); "
        "otherwise the full input is sent with every request.",
    )
    context_window = models.PositiveIntegerField(
        default=128_000,
        validators=[MinValueValidator(1_000), MaxValueValidator(10_000_000)],
        help_text="Tokens the model accepts in one request.",
    )
    context_budget_percent = models.PositiveSmallIntegerField(
        default=80,
        validators=[MinValueValidator(10), MaxValueValidator(95)],
        help_text="Shorten old tool outputs, then compact, before a request passes this share.",
    )
    price_input = models.DecimalField(
        "Input price ($ per million tokens)",
        max_digits=10,
        decimal_places=4,
        default=Decimal(0),
        validators=[MinValueValidator(Decimal(0))],
    )
    price_cached_input = models.DecimalField(
        "Cached input price ($ per million tokens)",
        max_digits=10,
        decimal_places=4,
        default=Decimal(0),
        validators=[MinValueValidator(Decimal(0))],
    )
    price_output = models.DecimalField(
        "Output price ($ per million tokens)",
        max_digits=10,
        decimal_places=4,
        default=Decimal(0),
        validators=[MinValueValidator(Decimal(0))],
    )
    max_steps = models.PositiveIntegerField(
        "Max steps per turn",
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(500)],
        help_text="Model calls one prompt may make before the turn stops.",
    )
    instructions = models.TextField(
        blank=True, max_length=20_000, help_text="System instructions added to every request."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.project}: {self.model} ({self.kind})"

    @property
    def has_stored_key(self) -> bool:
        return bool(self.api_key_sealed)

    def set_api_key(self, key: str) -> None:
        """Seal ``key`` for storage ("" forgets the stored key). Does not save."""
        self.api_key_sealed = seal(key) if key else ""

    def stored_api_key(self) -> str:
        """The unsealed stored key, or "" when none is stored. Raises SealError."""
        return unseal(self.api_key_sealed) if self.api_key_sealed else ""

    @property
    def uses_site_key(self) -> bool:
        return bool(self.api_key_env)

    def prices(self) -> tuple[Decimal, Decimal, Decimal]:
        """Input, cached input and output prices ($ per million tokens): the site's price
        table for the site's keys (``AGENTIDE_MODEL_PRICES``), the project's own fields
        only for a key the team stored itself."""
        if self.uses_site_key:
            table = settings.AGENTIDE_MODEL_PRICES
            return table.get(self.model, table["*"])
        return (self.price_input, self.price_cached_input, self.price_output)

    def cost(self, *, input_tokens: int, cached_tokens: int, output_tokens: int) -> Decimal:
        """Dollar cost of one call; ``input_tokens`` includes the cached ones."""
        price_input, price_cached_input, price_output = self.prices()
        uncached = max(input_tokens - cached_tokens, 0)
        total = (
            uncached * price_input
            + cached_tokens * price_cached_input
            + output_tokens * price_output
        )
        return (total / _PER_MILLION).quantize(Decimal("0.000001"))


class SessionAgent(models.Model):
    """How the agent behaves in one session: with ``requires_approval`` every command the
    model asks for waits for a person with write access to approve or reject it."""

    session = models.OneToOneField(
        "notebook.Session", on_delete=models.CASCADE, related_name="agent_settings"
    )
    requires_approval = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"agent of session {self.session_id}"


class CommandApproval(models.Model):
    """One command the model asked for in approval mode, and what a person decided."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    cell = models.ForeignKey("notebook.Cell", on_delete=models.CASCADE, related_name="+")
    call_id = models.CharField(max_length=200)
    index = models.PositiveIntegerField()
    command = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reason = models.TextField(blank=True, max_length=2000)
    decided_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cell", "call_id", "index"], name="agents_approval_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.command[:40]} ({self.status})"
