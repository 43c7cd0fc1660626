"""``/v1/responses`` refusals through the openai SDK over real HTTP against Daphne: OpenAI's
error shape and status, the ``param`` named, and nothing created by a refused request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.agents.fake_openai import API_KEY, MODEL

SHELL = {"type": "shell", "environment": {"type": "container_auto"}}


@pytest.fixture
def client(sdk: Callable[[str], openai.OpenAI], api_key: str, project: Any) -> openai.OpenAI:
    from agentide.agents.models import ModelProvider

    # Never reached: every request here is refused before a cell is queued.
    provider = ModelProvider(
        project=project, kind="responses", base_url="http://127.0.0.1:9/v1", model=MODEL
    )
    provider.set_api_key(API_KEY)
    provider.save()
    return sdk(api_key)


def nothing_created() -> bool:
    from agentide.api.models import ApiContainer, ApiResponse
    from agentide.sessions.models import Cell

    return not (
        ApiResponse.objects.exists() or Cell.objects.exists() or ApiContainer.objects.exists()
    )


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"model": "gpt-other"}, "model"),
        ({"temperature": 0.2}, "temperature"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"max_output_tokens": 1}, "max_output_tokens"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [SHELL, SHELL]}, "tools[1]"),
        (
            {"tools": [{"type": "shell", "environment": {"type": "local"}}]},
            "tools[0].environment.type",
        ),
        (
            {"tools": [{"type": "shell", "environment": {"type": "container_auto",
                                                         "file_ids": ["file_1"]}}]},
            "tools[0].environment.file_ids",
        ),
        ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image",
                                                     "image_url": "http://x/y.png"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": "x"}] * 201}, "input"),
        ({"previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"background": True, "stream": True}, "background"),
    ],
)  # fmt: skip
def test_bad_parameters_answer_400_naming_the_param(
    client: openai.OpenAI, params: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "input": "Hello", **params}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**body)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error" and caught.value.message
    assert nothing_created()


def test_a_bad_key_answers_401(client: openai.OpenAI, sdk: Callable[[str], openai.OpenAI]) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk("sk-not-ours").responses.create(model=MODEL, input="Hello")
    with pytest.raises(openai.AuthenticationError):
        sdk("sk-not-ours").responses.retrieve("resp_whatever")


def test_another_teams_container_and_response_answer_404(
    client: openai.OpenAI, personas: Any, make_key: Any
) -> None:
    from agentide.api.auth import ApiCaller
    from agentide.api.containers import create_container
    from agentide.projects.models import Project

    theirs = Project.objects.create(
        team=personas.other_team, name="Theirs", slug="theirs", created_by=personas.outsider
    )
    key, _secret = make_key(user=personas.outsider, project_=theirs, name="theirs")
    caller = ApiCaller(
        key=key,
        membership=personas.other_team.memberships.get(user=personas.outsider),
        project=theirs,
        user=personas.outsider,
    )
    container = create_container(caller, name="theirs")
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(
            model=MODEL,
            input="Hello",
            tools=[{"type": "shell", "environment": {"type": "container_reference",
                                                      "container_id": container.public_id}}],
        )  # fmt: skip
    assert caught.value.status_code == 404
    for call in (
        lambda: client.responses.retrieve("resp_" + "0" * 48),
        lambda: client.responses.delete("resp_" + "0" * 48),
        lambda: client.responses.input_items.list("resp_" + "0" * 48),
        lambda: client.responses.cancel("resp_" + "0" * 48),
    ):
        with pytest.raises(openai.NotFoundError):
            call()


def test_a_suspended_team_gets_429_with_the_quotas_message(
    client: openai.OpenAI, personas: Any
) -> None:
    from agentide.quotas.services import quota_for

    quota = quota_for(personas.team)
    quota.suspended = True
    quota.suspended_reason = "unpaid invoice"
    quota.save()
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model=MODEL, input="Hello", tools=[SHELL])
    assert caught.value.status_code == 429
    assert "suspended (unpaid invoice)" in caught.value.message
    assert nothing_created()


def test_an_expired_container_answers_409(client: openai.OpenAI) -> None:
    from agentide.api.containers import expire_container
    from agentide.api.models import ApiContainer
    from agentide.sessions.models import Cell

    box = client.containers.create(name="short-lived")
    expire_container(ApiContainer.objects.get(public_id=box.id))
    with pytest.raises(openai.ConflictError) as caught:
        client.responses.create(
            model=MODEL,
            input="Hello",
            tools=[{"type": "shell", "environment": {"type": "container_reference",
                                                      "container_id": box.id}}],
        )  # fmt: skip
    assert caught.value.code == "container_expired"
    assert not Cell.objects.exists()
