"""``/v1/responses``: a request becomes a prompt cell of its container's session.

``parse_request`` validates the body the openai SDK sends (everything bounded; anything this
runtime does not do is refused with a 400 naming the ``param``); ``create_response`` resolves
the container (``container_auto`` makes one, ``container_reference`` and
``previous_response_id`` reuse one), submits the prompt cell and appends its ``api.request``
event in one transaction, and records the ``ApiResponse``. The worker runs the turn like any
prompt; the Response object is the fold of the cell's events (``api.shapes``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import Http404

from agentide.agents.services import provider_for_project
from agentide.api.auth import ApiCaller
from agentide.api.containers import create_container, use_container
from agentide.api.errors import ApiError
from agentide.api.models import ApiContainer, ApiResponse
from agentide.api.shapes import RequestEcho, ResponseFold, input_item_object
from agentide.events import registry
from agentide.events.log import append_event, event_message
from agentide.events.models import Event
from agentide.sessions import execution
from agentide.sessions.models import Cell

# Bounds of one request (OpenAI's own where it has them: metadata).
MAX_INPUT_ITEMS = 200
MAX_INPUT_CHARS = 512 * 1024
MAX_INSTRUCTIONS_CHARS = 64 * 1024
MAX_TOOLS = 64
MAX_TOOL_SCHEMA_CHARS = 16 * 1024
MAX_TOOL_DESCRIPTION_CHARS = 4 * 1024
MAX_TOOL_NAME_CHARS = 64
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_OUTPUT_TOKENS = 1_000_000
MIN_OUTPUT_TOKENS = 16
MEMORY_LIMITS = ("1g", "4g", "16g", "64g")
# Events read per database round trip while following a cell.
EVENTS_PER_READ = 500

# Parameters accepted with only the value this runtime has (anything else is refused).
ACCEPTED_AS_DEFAULT: dict[str, tuple[Any, ...]] = {
    "tool_choice": ("auto",),
    "parallel_tool_calls": (True,),
    "truncation": ("disabled",),
    "include": ([],),
    "stream_options": ({},),
}
KNOWN = {
    "model",
    "input",
    "instructions",
    "tools",
    "previous_response_id",
    "store",
    "max_output_tokens",
    "metadata",
    "stream",
    "background",
    *ACCEPTED_AS_DEFAULT,
}
ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")


@dataclass
class ResponseRequest:
    """A validated ``POST /v1/responses`` body."""

    model: str
    input: list[dict[str, Any]]
    instructions: str | None = None
    functions: list[dict[str, Any]] = field(default_factory=list)
    shell: dict[str, Any] | None = None  # the shell tool's environment, when given
    previous_response_id: str | None = None
    store: bool = True
    max_output_tokens: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    background: bool = False


def bad(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def parse_request(body: Any) -> ResponseRequest:
    """Validate a request body; raises ApiError (400, naming the ``param``) for anything this
    runtime refuses or does not do."""
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.", "body", "invalid_json")
    for name, value in body.items():
        if value is None:
            continue
        if name not in KNOWN:
            raise bad(
                f"The parameter {name!r} is not supported here.", name, "unsupported_parameter"
            )
        if name in ACCEPTED_AS_DEFAULT and value not in ACCEPTED_AS_DEFAULT[name]:
            raise bad(
                f"Only {ACCEPTED_AS_DEFAULT[name][0]!r} is supported for {name!r}.",
                name,
                "unsupported_value",
            )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad(
            "Give the model: this project's configured model.",
            "model",
            "missing_required_parameter",
        )
    request = ResponseRequest(
        model=model,
        input=parse_input(body.get("input")),
        instructions=_optional_str(body, "instructions", MAX_INSTRUCTIONS_CHARS),
        previous_response_id=_optional_str(body, "previous_response_id", 100),
        store=_flag(body, "store", True),
        stream=_flag(body, "stream", False),
        background=_flag(body, "background", False),
        metadata=parse_metadata(body.get("metadata")),
    )
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise bad("max_output_tokens must be an integer.", "max_output_tokens", "invalid_type")
        if not MIN_OUTPUT_TOKENS <= limit <= MAX_OUTPUT_TOKENS:
            raise bad(
                f"max_output_tokens must be between {MIN_OUTPUT_TOKENS} and {MAX_OUTPUT_TOKENS}.",
                "max_output_tokens",
            )
        request.max_output_tokens = limit
    if request.background and request.stream:
        raise bad(
            "background with stream is not supported: retrieve the response instead.", "background"
        )
    if request.background and not request.store:
        raise bad("A background response must be stored (store: true).", "store")
    request.functions, request.shell = parse_tools(body.get("tools"))
    return request


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false.", name, "invalid_type")
    return value


def _optional_str(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad(f"{name} must be a string.", name, "invalid_type")
    if len(value) > limit:
        raise bad(f"{name} is limited to {limit} characters.", name, "string_above_max_length")
    return value


def parse_input(value: Any) -> list[dict[str, Any]]:
    """``input`` as the normalised items of ``api.request`` (see events/registry.py): a string
    is one user message; items are messages (text content only) and function_call_output."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad("input must be a string or a non-empty list of items.", "input", "invalid_type")
    if len(value) > MAX_INPUT_ITEMS:
        raise bad(
            f"input is limited to {MAX_INPUT_ITEMS} items.", "input", "array_above_max_length"
        )
    items = [_input_item(item, f"input[{index}]") for index, item in enumerate(value)]
    size = sum(len(item.get("content") or item.get("output") or "") for item in items)
    if size > MAX_INPUT_CHARS:
        raise bad(
            f"input is limited to {MAX_INPUT_CHARS} characters in all.",
            "input",
            "string_above_max_length",
        )
    return items


def _input_item(item: Any, param: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise bad("Each input item must be an object.", param, "invalid_type")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ROLES:
            raise bad(f"role must be one of {', '.join(ROLES)}.", f"{param}.role")
        return {
            "type": "message",
            "role": role,
            "content": _text(item.get("content"), f"{param}.content"),
        }
    if kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id or len(call_id) > 200:
            raise bad("call_id must be the function call's id.", f"{param}.call_id")
        return {
            "type": "function_call_output",
            "call_id": call_id,
            "output": _text(item.get("output"), f"{param}.output"),
        }
    raise bad(
        f"Input items of type {kind!r} are not supported: send messages and "
        "function_call_output items (the earlier turns live in the session; chain them with "
        "previous_response_id).",
        f"{param}.type",
        "unsupported_value",
    )


def _text(content: Any, param: str) -> str:
    """Text content: a string or a list of input_text/output_text parts (joined)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad("content must be a string or a list of text parts.", param, "invalid_type")
    texts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
            raise bad(
                "Only text content (input_text) is supported.",
                f"{param}[{index}].type",
                "unsupported_value",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise bad("text must be a string.", f"{param}[{index}].text", "invalid_type")
        texts.append(text)
    return "\n".join(texts)


def parse_metadata(value: Any) -> dict[str, str]:
    """OpenAI's metadata limits: 16 keys, keys of 64 characters, values of 512."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad("metadata must be an object of strings.", "metadata", "invalid_type")
    if len(value) > MAX_METADATA_KEYS:
        raise bad(
            f"metadata is limited to {MAX_METADATA_KEYS} keys.",
            "metadata",
            "object_above_max_properties",
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise bad(
                f"metadata keys are limited to {MAX_METADATA_KEY_CHARS} characters.",
                f"metadata.{key[:64]}",
            )
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE_CHARS:
            raise bad(
                f"metadata values are strings of at most {MAX_METADATA_VALUE_CHARS} characters.",
                f"metadata.{key}",
            )
    return dict(value)


def parse_tools(value: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The client's function tools (normalised) and the shell tool's environment (None when
    the request gave no shell tool)."""
    if value is None:
        return [], None
    if not isinstance(value, list):
        raise bad("tools must be a list.", "tools", "invalid_type")
    if len(value) > MAX_TOOLS:
        raise bad(f"tools is limited to {MAX_TOOLS} tools.", "tools", "array_above_max_length")
    functions: list[dict[str, Any]] = []
    shell: dict[str, Any] | None = None
    for index, tool in enumerate(value):
        param = f"tools[{index}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "shell":
            if shell is not None:
                raise bad("Give the shell tool once.", param)
            shell = _shell_environment(tool.get("environment"), f"{param}.environment")
        elif kind == "function":
            functions.append(_function_tool(tool, param))
        else:
            raise bad(
                f"Tools of type {kind!r} are not supported: use shell and function tools.",
                f"{param}.type",
                "unsupported_value",
            )
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names) or "shell" in names:
        raise bad("Function tool names must be unique and not 'shell'.", "tools")
    return functions, shell


def _shell_environment(environment: Any, param: str) -> dict[str, Any]:
    if environment is None:
        return {"type": "container_auto", "memory_limit": None}
    if not isinstance(environment, dict):
        raise bad("environment must be an object.", param, "invalid_type")
    kind = environment.get("type")
    if kind == "container_auto":
        for name in ("file_ids", "skills", "network_policy"):
            if environment.get(name):
                raise bad(f"{name} is not supported.", f"{param}.{name}", "unsupported_parameter")
        memory = environment.get("memory_limit")
        if memory is not None and memory not in MEMORY_LIMITS:
            raise bad(
                f"memory_limit must be one of {', '.join(MEMORY_LIMITS)}.", f"{param}.memory_limit"
            )
        return {"type": "container_auto", "memory_limit": memory}
    if kind == "container_reference":
        container_id = environment.get("container_id")
        if not isinstance(container_id, str) or not container_id or len(container_id) > 100:
            raise bad("container_id must be a container's id.", f"{param}.container_id")
        return {"type": "container_reference", "container_id": container_id}
    raise bad(
        "The shell runs in an AgentIDE container: use container_auto or container_reference.",
        f"{param}.type",
        "unsupported_value",
    )


def _function_tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    name = tool.get("name")
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_TOOL_NAME_CHARS
        or not all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    ):
        raise bad("A function's name is 1-64 letters, digits, _ or -.", f"{param}.name")
    description = tool.get("description") or ""
    if not isinstance(description, str) or len(description) > MAX_TOOL_DESCRIPTION_CHARS:
        raise bad(
            f"description is a string of at most {MAX_TOOL_DESCRIPTION_CHARS} characters.",
            f"{param}.description",
        )
    parameters = tool.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise bad("parameters must be a JSON schema object.", f"{param}.parameters", "invalid_type")
    if len(json.dumps(parameters)) > MAX_TOOL_SCHEMA_CHARS:
        raise bad(
            f"parameters is limited to {MAX_TOOL_SCHEMA_CHARS} characters of JSON.",
            f"{param}.parameters",
        )
    strict = tool.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad("strict must be true or false.", f"{param}.strict", "invalid_type")
    return {
        "type": "function",
        "name": name,
        "description": description,
        "parameters": parameters,
        "strict": True if strict is None else strict,
    }


# --- creating and reading responses ------------------------------------------------------------


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def create_response(caller: ApiCaller, request: ResponseRequest) -> ApiResponse:
    """Submit the request as a prompt cell of its container's session and record it.

    The container: the previous response's (``previous_response_id``, which must be the
    latest response of its container: 409 otherwise), the referenced one, or a new one
    (``container_auto``, also when no shell tool is given: the conversation lives in a
    session). The cell, its ``api.request`` event and the ApiResponse are written in one
    transaction; the scheduler is woken on commit. Raises ApiError, Http404 (other teams'
    containers), QuotaExceeded and ValidationError (refused cells; nothing is created).
    """
    provider = provider_for_project(caller.project)
    if provider.pk is None or not provider.model:
        raise bad(
            "No model is configured for this project: an owner or admin sets one up.", "model"
        )
    if request.model != provider.model:
        raise bad(
            f"This project runs the model {provider.model!r}: give that as model.",
            "model",
            "model_not_found",
        )
    with transaction.atomic():
        previous = _previous(caller, request)
        container = _container(caller, request, previous)
        session = container.session
        response_id = new_response_id()
        cell = execution.submit_cell(
            caller.membership, session, Cell.Kind.PROMPT, cell_source(request.input)
        )
        response = ApiResponse.objects.create(
            public_id=response_id,
            session=session,
            cell=cell,
            key=caller.key,
            previous=previous,
            store=request.store,
            background=request.background,
            model=request.model,
            instructions=request.instructions or "",
            tools=echo_tools(request, container),
            metadata=request.metadata,
            max_output_tokens=request.max_output_tokens,
        )
        append_event(
            session.pk,
            registry.API_REQUEST,
            {
                "response_id": response_id,
                "key_name": caller.key.name,
                "instructions": request.instructions,
                "input": request.input,
                "tools": request.functions,
                "shell": request.shell is not None,
                "max_output_tokens": request.max_output_tokens,
            },
            cell=cell,
            actor=caller.user,
        )
    return response


def _previous(caller: ApiCaller, request: ResponseRequest) -> ApiResponse | None:
    if not request.previous_response_id:
        return None
    try:
        previous = get_response(caller, request.previous_response_id, for_update=True)
    except Http404:
        raise bad(
            f"Previous response with id {request.previous_response_id!r} not found.",
            "previous_response_id",
            "previous_response_not_found",
        ) from None
    latest = (
        ApiResponse.objects.filter(session_id=previous.session_id)
        .order_by("-cell__position")
        .values_list("pk", flat=True)
        .first()
    )
    if latest != previous.pk:
        raise ApiError(
            409,
            "previous_response_id must be the latest response of its container: a later "
            "response continues it already.",
            param="previous_response_id",
            code="previous_response_not_latest",
        )
    return previous


def _container(
    caller: ApiCaller, request: ResponseRequest, previous: ApiResponse | None
) -> ApiContainer:
    shell = request.shell or {"type": "container_auto", "memory_limit": None}
    if previous is None and shell["type"] == "container_auto":
        return create_container(
            caller, name=f"Responses ({request.model})"[:64], memory_limit=shell["memory_limit"]
        )
    if previous is None:
        return use_container(caller, shell["container_id"])
    container_id = previous.session.api_container.public_id
    if shell["type"] == "container_reference" and shell["container_id"] != container_id:
        raise bad(
            "The previous response ran in another container: leave the shell tool's "
            "container_reference out, or give that container.",
            "tools[].environment.container_id",
        )
    return use_container(caller, container_id)


def cell_source(items: list[dict[str, Any]]) -> str:
    """What the prompt cell shows as its source: the input's text, bounded."""
    parts = []
    for item in items:
        if item["type"] == "function_call_output":
            parts.append(f"[function_call_output {item['call_id']}]\n{item['output']}")
        elif item["role"] == "user":
            parts.append(item["content"])
        else:
            parts.append(f"[{item['role']}]\n{item['content']}")
    text = "\n\n".join(parts).strip() or "(empty input)"
    # Cells are bounded in bytes; the whole input is in the api.request event.
    limit = settings.NOTEBOOK_MAX_SOURCE_BYTES // 4
    return text if len(text) <= limit else text[:limit] + "\n[... input shortened ...]"


def echo_tools(request: ResponseRequest, container: ApiContainer) -> list[dict[str, Any]]:
    """The request's tools as the Response object echoes them (the SDK's Tool shapes)."""
    tools = [dict(tool) for tool in request.functions]
    if request.shell is not None:
        tools.insert(
            0,
            {
                "type": "shell",
                "environment": {
                    "type": "container_reference",
                    "container_id": container.public_id,
                },
            },
        )
    return tools


def get_response(caller: ApiCaller, response_id: str, *, for_update: bool = False) -> ApiResponse:
    """The caller's project's stored response ``response_id``; Http404 for unknown ids, other
    teams' and projects' responses and ``store: false`` ones."""
    responses = ApiResponse.objects.select_related("cell", "session").filter(
        public_id=response_id,
        store=True,
        session__project=caller.project,
        session__project__team_id=caller.membership.team_id,
    )
    if for_update:
        responses = responses.select_for_update(of=("self",))
    response = responses.first()
    if response is None:
        raise Http404("No such response.")
    return response


def request_echo(response: ApiResponse) -> RequestEcho:
    return RequestEcho(
        id=response.public_id,
        created_at=response.created_at.timestamp(),
        model=response.model,
        instructions=response.instructions or None,
        tools=response.tools,
        previous_response_id=response.previous.public_id if response.previous else None,
        metadata=response.metadata,
        max_output_tokens=response.max_output_tokens,
        store=response.store,
        background=response.background,
    )


def cell_events(response: ApiResponse, after_seq: int) -> list[dict[str, Any]]:
    """The event messages of the response's cell after ``after_seq``, in seq order, at most
    ``EVENTS_PER_READ`` of them (the session's other cells' events are not read)."""
    events = (
        Event.objects.filter(cell_id=response.cell_id, seq__gt=after_seq)
        .select_related("actor")
        .order_by("seq")[:EVENTS_PER_READ]
    )
    return [event_message(event) for event in events]


def cell_done(response: ApiResponse) -> bool:
    """Whether the response's cell has ended."""
    return Cell.objects.filter(pk=response.cell_id, status__in=Cell.DONE).exists()


def fold_response(response: ApiResponse) -> ResponseFold:
    """The Response as it stands now: the fold of every event of its cell so far."""
    fold = ResponseFold(request_echo(response))
    while batch := cell_events(response, fold.last_seq):
        for message in batch:
            fold.feed(message)
        if fold.done:
            break
    return fold


def delete_response(caller: ApiCaller, response: ApiResponse) -> None:
    """Forget the stored response (the cell stays in the notebook: the team's record); a
    running one is cancelled first."""
    if response.cell.status in (Cell.Status.QUEUED, Cell.Status.RUNNING):
        execution.cancel_cell(caller.membership, response.session, response.cell_id)
    response.delete()


def cancel_response(caller: ApiCaller, response: ApiResponse) -> None:
    """Cancel a background response (its cell); a done one is left as it is. 400 for a
    response made without ``background``, as OpenAI answers."""
    if not response.background:
        raise bad("Only background responses can be cancelled.", "response_id")
    execution.cancel_cell(caller.membership, response.session, response.cell_id)


def input_items(response: ApiResponse) -> list[dict[str, Any]]:
    """The request's input items (its ``api.request`` event) as the SDK's ResponseItem
    shapes, in order."""
    payload = (
        Event.objects.filter(cell_id=response.cell_id, type=registry.API_REQUEST)
        .values_list("payload", flat=True)
        .first()
    )
    token = response.public_id.removeprefix("resp_")
    return [
        input_item_object(item, f"in_{token}{index:04d}")
        for index, item in enumerate((payload or {}).get("input") or ())
    ]
