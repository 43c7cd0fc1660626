"""What the turn loop may ask of a model provider, in provider-neutral types.

``backends/openai.py`` is the only implementation and the only module that imports ``openai``.
The turn loop keeps the conversation as a list of ``HistoryItem``s rebuilt from the event log;
a backend translates it to its wire format (Responses input items or Chat messages).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agentide.agents.backends.egress import EgressPolicy

CallForm = Literal["shell_call", "function_call", "tool_call"]
SHELL_FUNCTION_NAME = "shell"


@dataclass(frozen=True)
class ProviderConfig:
    """Everything a backend needs to reach one model. ``api_key`` is a secret: never log it."""

    kind: Literal["responses", "chat_completions"]
    model: str
    api_key: str
    base_url: str = ""
    instructions: str = ""
    stores_responses: bool = True
    timeout_s: float = 600.0
    max_retries: int = 4
    egress: EgressPolicy = field(default_factory=EgressPolicy)

    def __repr__(self) -> str:  # keeps the key out of tracebacks and logs
        return (
            f"ProviderConfig(kind={self.kind!r}, model={self.model!r}, base_url={self.base_url!r})"
        )


@dataclass(frozen=True)
class Message:
    """A text message: a person's prompt (``user``), the model's answer (``assistant``), or
    an API client's ``system``/``developer`` message."""

    role: Literal["user", "assistant", "system", "developer"]
    text: str


@dataclass(frozen=True)
class ShellCall:
    """One tool call asking to run ``commands`` in order in the session's container.

    ``form`` is how the provider expressed it: a native Responses ``shell_call``, a Responses
    ``function_call`` of the ``shell`` function, or a Chat ``tool_call``. ``error`` is set when
    the call could not be understood (bad JSON, unknown tool): it is answered with that error
    instead of being run. ``arguments`` keeps the raw JSON of function-style calls.
    """

    call_id: str
    commands: tuple[str, ...]
    form: CallForm = "shell_call"
    timeout_ms: int | None = None
    max_output_length: int | None = None
    name: str = SHELL_FUNCTION_NAME
    arguments: str = ""
    error: str = ""


@dataclass(frozen=True)
class CommandOutput:
    """How one command of a call ended, as the model will see it (already shortened)."""

    stdout: str
    stderr: str
    outcome: Literal["exit", "timeout"]
    exit_code: int | None = None


@dataclass(frozen=True)
class ShellResult:
    """The answer to one ``ShellCall``: one output per command run, or an ``error``."""

    call_id: str
    form: CallForm
    outputs: tuple[CommandOutput, ...] = ()
    error: str = ""
    max_output_length: int | None = None


@dataclass(frozen=True)
class FunctionTool:
    """A function tool of an API client: offered to the model next to (or instead of) the
    shell tool; the model's calls of it go back to the client, which runs it."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    strict: bool = False


@dataclass(frozen=True)
class FunctionCall:
    """The model's call of a client's function tool, with its raw JSON ``arguments``."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class FunctionOutput:
    """The answer to a ``FunctionCall``: what the client sent back, or an error AgentIDE
    put in when the client did not answer (strict APIs want every call answered)."""

    call_id: str
    output: str


HistoryItem = Message | ShellCall | ShellResult | FunctionCall | FunctionOutput


@dataclass(frozen=True)
class TurnOptions:
    """What one turn asks of the model beyond the project's settings (an API request's).

    ``instructions`` replaces the provider's (None keeps them); ``tools`` are the client's
    function tools; ``shell`` says whether the shell tool is offered; ``max_output_tokens``
    caps the reply (None: the provider's default).
    """

    instructions: str | None = None
    tools: tuple[FunctionTool, ...] = ()
    shell: bool = True
    max_output_tokens: int | None = None


DEFAULT_OPTIONS = TurnOptions()


@dataclass
class Usage:
    """Tokens of one call as the provider reported them (``input_tokens`` includes cached)."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass
class ModelReply:
    """One model response: its text, the shell calls it asks for, its calls of the client's
    function tools, and its usage.

    ``response_id`` is the provider's id (usable as ``previous_response_id`` when the
    provider stores responses); "" when it has none. ``truncated`` is True when the provider
    cut the reply at its output token limit.
    """

    response_id: str
    text: str
    calls: list[ShellCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    client_calls: list[FunctionCall] = field(default_factory=list)
    truncated: bool = False


class ModelError(Exception):
    """A model call failed. ``permanent`` is False when retrying later may help (rate limits,
    server errors, timeouts already retried at the seam), True when it will fail the same way
    again (bad key, unknown model, invalid request)."""

    def __init__(self, message: str, *, permanent: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.status_code = status_code


class ModelCallCancelled(Exception):
    """The caller's ``should_stop`` said stop while the reply was streaming."""

    def __init__(self, partial_text: str) -> None:
        super().__init__("model call cancelled")
        self.partial_text = partial_text


class ModelBackend(abc.ABC):
    """One provider connection, used for the duration of one turn."""

    @abc.abstractmethod
    def respond(
        self,
        history: list[HistoryItem],
        *,
        previous_response_id: str = "",
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
        options: TurnOptions = DEFAULT_OPTIONS,
    ) -> ModelReply:
        """Stream one model response to ``history`` (items after ``previous_response_id``
        when given), with the tools, instructions and output limit of ``options``. Calls
        ``on_text`` with each text delta as it arrives and polls ``should_stop`` between
        stream events.

        Raises ModelError (permanent or not) and ModelCallCancelled.
        """

    def abort(self) -> None:
        """Stop the reply being streamed, from another thread: the ``respond`` call then
        raises ModelCallCancelled. Does nothing when no reply is streaming."""
        return None

    @abc.abstractmethod
    def complete(self, prompt: str) -> tuple[str, Usage]:
        """One non-streamed, tool-less, stateless request; returns its text and usage.

        Used for connection checks and compaction summaries. Raises ModelError.
        """
