"""``/v1/responses`` end to end: the real openai SDK over real HTTP against Daphne, a real Celery
worker running the turn, the shell calls in a real Docker container, the model behind the fake
server of tests/agents (a Responses upstream and a Chat Completions upstream)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.agents.fake_openai import API_KEY, MODEL, FakeOpenAI, Step
from tests.support import wait_until

SHELL = {"type": "shell", "environment": {"type": "container_auto"}}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(params=["responses", "chat_completions"])
def upstream(request: pytest.FixtureRequest, project: Any, fake: FakeOpenAI) -> str:
    """The project's model provider: the fake server, as each upstream kind."""
    from agentide.agents.models import ModelProvider

    provider = ModelProvider(project=project, kind=request.param, base_url=fake.url, model=MODEL)
    provider.set_api_key(API_KEY)
    provider.save()
    return str(request.param)


@pytest.fixture
def client(
    sdk: Callable[[str], openai.OpenAI], api_key: str, celery_worker: Any, upstream: str
) -> openai.OpenAI:
    return sdk(api_key)


def cell_of(response_id: str) -> Any:
    from agentide.api.models import ApiResponse

    return ApiResponse.objects.select_related("cell").get(public_id=response_id).cell


def test_create_runs_the_models_shell_calls_in_a_container_and_returns_every_item(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    from agentide.events import registry
    from agentide.events.models import Event

    fake.add(Step(calls=[{"commands": ["echo hello from $PWD"]}]), Step(text="All done."))
    response = client.responses.create(
        model=MODEL, input="Say hello", tools=[SHELL], metadata={"ticket": "42"}
    )
    assert response.status == "completed"
    assert [item.type for item in response.output] == [
        "shell_call",
        "shell_call_output",
        "message",
    ]
    call, output = response.output[0], response.output[1]
    assert call.type == "shell_call" and call.action.commands == ["echo hello from $PWD"]
    assert output.type == "shell_call_output" and output.call_id == call.call_id
    assert output.output[0].stdout == "hello from /workspace\n"
    assert output.output[0].outcome.type == "exit" and output.output[0].outcome.exit_code == 0
    assert response.output_text == "All done."
    assert response.metadata == {"ticket": "42"}
    assert response.usage is not None and response.usage.total_tokens > 0
    shell = response.tools[0]
    assert shell.type == "shell" and shell.environment.type == "container_reference"
    # The request is an ordinary prompt cell of the container's session, with its request.
    cell = cell_of(response.id)
    assert cell.kind == "prompt" and cell.status == "finished" and cell.source == "Say hello"
    request = Event.objects.get(cell=cell, type=registry.API_REQUEST).payload
    assert request["key_name"] == "ci" and request["shell"] is True
    assert request["input"] == [{"type": "message", "role": "user", "content": "Say hello"}]
    # Retrieval folds the same log: the same items, the same ids.
    again = client.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()


def test_stream_sends_the_sdks_events_in_order_and_the_stream_helper_parses_them(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.add(Step(calls=[{"commands": ["echo one", "echo two"]}]), Step(text="Two lines."))
    events = list(client.responses.create(model=MODEL, input="Count", tools=[SHELL], stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    for expected in (
        "response.output_item.added",
        "response.shell_call_command.added",
        "response.shell_call_command.delta",
        "response.shell_call_command.done",
        "response.shell_call_output_content.delta",
        "response.shell_call_output_content.done",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert expected in types, expected
    deltas = [
        e.delta.stdout for e in events if e.type == "response.shell_call_output_content.delta"
    ]
    assert "".join(deltas) == "one\ntwo\n"
    final = events[-1].response
    assert final.output_text == "Two lines."

    fake.add(Step(text="Streamed through the helper."))
    with client.responses.stream(model=MODEL, input="Again") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        helper_final = stream.get_final_response()
    assert "".join(texts) == "Streamed through the helper."
    assert helper_final.output_text == "Streamed through the helper."
    assert client.responses.retrieve(helper_final.id).output_text == helper_final.output_text


def test_async_client_streams_too(
    daphne_server: Any, api_key: str, celery_worker: Any, upstream: str, fake: FakeOpenAI
) -> None:
    fake.add(Step(text="Hello from the async client."))

    async def talk() -> tuple[list[Any], Any]:
        client = openai.AsyncOpenAI(
            base_url=f"{daphne_server.url}/v1", api_key=api_key, max_retries=0
        )
        async with client:
            stream = await client.responses.create(model=MODEL, input="Hi", stream=True)
            events = [event async for event in stream]
            return events, await client.responses.retrieve(events[-1].response.id)

    events, stored = asyncio.run(talk())
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Hello from the async client."
    assert stored.status == "completed" and stored.output_text == "Hello from the async client."


def test_previous_response_id_reuses_the_container_and_its_history(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.add(
        Step(calls=[{"commands": ["python3 -m venv /workspace/venv --without-pip"]}]),
        Step(text="The venv is ready."),
    )
    first = client.responses.create(model=MODEL, input="Make a venv", tools=[SHELL])
    assert first.status == "completed"
    fake.add(
        Step(
            calls=[{"commands": ["/workspace/venv/bin/python -c 'import sys; print(sys.prefix)'"]}]
        ),
        Step(text="It works."),
    )
    second = client.responses.create(
        model=MODEL,
        input="Use the venv",
        tools=[SHELL],
        previous_response_id=first.id,
    )
    assert second.previous_response_id == first.id
    assert second.output[1].output[0].stdout == "/workspace/venv\n"
    assert second.tools[0].environment.container_id == first.tools[0].environment.container_id
    assert cell_of(second.id).session_id == cell_of(first.id).session_id
    # The model saw the first call's work: in the input (Chat), or chained upstream (Responses).
    last_request = fake.requests[-2].body
    assert "venv is ready" in str(last_request) or last_request.get("previous_response_id")
    # Only the latest response of a container continues it.
    with pytest.raises(openai.ConflictError) as caught:
        client.responses.create(model=MODEL, input="Fork?", previous_response_id=first.id)
    assert caught.value.code == "previous_response_not_latest"


def test_a_function_tool_call_goes_back_to_the_client_and_its_output_continues_the_turn(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.add(Step(raw_calls=[("get_weather", '{"city": "Oslo"}')]))
    first = client.responses.create(model=MODEL, input="Weather in Oslo?", tools=[WEATHER])
    assert first.status == "completed"
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == '{"city": "Oslo"}'

    fake.add(Step(text="It is 12 C in Oslo."))
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "12 C"}],
    )
    assert second.output_text == "It is 12 C in Oslo."
    assert "12 C" in str(fake.requests[-1].body)


def test_stored_responses_are_retrieved_listed_and_deleted(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.add(Step(text="Noted."))
    response = client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Note this."}]},
        ],
    )
    items = client.responses.input_items.list(response.id, order="asc")
    assert [(i.type, i.role) for i in items.data] == [
        ("message", "developer"),
        ("message", "user"),
    ]
    assert items.data[1].content[0].text == "Note this."
    cell = cell_of(response.id)
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(response.id)
    # The cell stays in the notebook: the team's record.
    cell.refresh_from_db()
    assert cell.status == "finished"

    fake.add(Step(text="Not kept."))
    unstored = client.responses.create(model=MODEL, input="Forget me", store=False)
    assert unstored.output_text == "Not kept."
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="Go on", previous_response_id=unstored.id)
    assert caught.value.param == "previous_response_id"


def test_background_responses_run_in_the_worker_and_can_be_cancelled(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    import threading

    hold = threading.Event()
    fake.add(Step(text="Working on it for a long time", hold=hold))
    response = client.responses.create(model=MODEL, input="Take your time", background=True)
    assert response.status == "queued" and response.background is True
    cell = cell_of(response.id)
    wait_until(lambda: client.responses.retrieve(response.id).output_text, timeout=60, what="text")
    cancelled = client.responses.cancel(response.id)
    assert cancelled.id == response.id
    wait_until(
        lambda: client.responses.retrieve(response.id).status == "cancelled",
        timeout=60,
        what="the cancel",
    )
    hold.set()
    cell.refresh_from_db()
    assert cell.status == "cancelled"


def test_a_client_that_disconnects_mid_stream_leaves_no_running_cell(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    import threading

    from agentide.sessions.models import Cell

    hold = threading.Event()
    fake.add(Step(text="A long story begins and never ends", hold=hold))
    stream = client.responses.create(model=MODEL, input="Tell a story", stream=True)
    response_id = ""
    for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.output_text.delta":
            break
    stream.close()
    cell = cell_of(response_id)
    wait_until(
        lambda: Cell.objects.get(pk=cell.pk).status in Cell.DONE,
        timeout=60,
        what="the cell to end after the disconnect",
    )
    hold.set()
    assert Cell.objects.get(pk=cell.pk).status == Cell.Status.CANCELLED


def test_a_chain_goes_on_when_the_project_switches_upstream_kind(
    sdk: Callable[[str], openai.OpenAI],
    api_key: str,
    celery_worker: Any,
    project: Any,
    fake: FakeOpenAI,
) -> None:
    from agentide.agents.models import ModelProvider

    provider = ModelProvider(project=project, kind="responses", base_url=fake.url, model=MODEL)
    provider.set_api_key(API_KEY)
    provider.save()
    client = sdk(api_key)
    fake.add(Step(calls=[{"commands": ["echo 41 > /workspace/n.txt"]}]), Step(text="Stored 41."))
    first = client.responses.create(model=MODEL, input="Store 41", tools=[SHELL])
    provider.kind = "chat_completions"
    provider.save()
    fake.add(Step(calls=[{"commands": ["cat /workspace/n.txt"]}]), Step(text="It was 41."))
    second = client.responses.create(
        model=MODEL, input="What was stored?", tools=[SHELL], previous_response_id=first.id
    )
    assert second.output[1].output[0].stdout == "41\n"
    assert second.output_text == "It was 41."
    # The Chat upstream got the whole conversation from the session's log.
    sent = str(fake.requests[-2].body)
    assert fake.requests[-2].path == "/v1/chat/completions"
    assert "Store 41" in sent and "Stored 41." in sent and "echo 41" in sent


def test_a_blocking_call_whose_client_gives_up_leaves_no_running_cell(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    import threading

    from agentide.api.models import ApiResponse
    from agentide.sessions.models import Cell

    hold = threading.Event()
    fake.add(Step(text="Thinking for longer than the client waits", hold=hold))
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=3.0).responses.create(model=MODEL, input="Think long")
    response = ApiResponse.objects.get()
    wait_until(
        lambda: Cell.objects.get(pk=response.cell_id).status in Cell.DONE,
        timeout=60,
        what="the cell to end after the client gave up",
    )
    hold.set()
    assert Cell.objects.get(pk=response.cell_id).status == Cell.Status.CANCELLED
