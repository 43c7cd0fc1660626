"""An API response watched live in the notebook: a reviewer with the container's session open
in Debian's Chromium sees the request (the key's name, its input, escaped) and the agent's work
stream in while the openai SDK waits for its answer; a reload shows the same."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.agents.fake_openai import API_KEY, MODEL, FakeOpenAI, Step
from tests.support import open_page

pytestmark = pytest.mark.browser


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def test_a_response_streams_into_the_notebook_of_its_container(
    browser: Any,
    daphne_server: Any,
    celery_worker: Any,
    personas: Any,
    project: Any,
    api_key: str,
    sdk: Callable[[str], openai.OpenAI],
    fake: FakeOpenAI,
    screenshot: Any,
) -> None:
    from agentide.agents.models import ModelProvider
    from agentide.api.models import ApiContainer

    provider = ModelProvider(
        project=project, kind="chat_completions", base_url=fake.url, model=MODEL
    )
    provider.set_api_key(API_KEY)
    provider.save()
    client = sdk(api_key)
    box = client.containers.create(name="watched")
    session = ApiContainer.objects.get(public_id=box.id).session
    reviewer = open_page(browser, daphne_server, personas.reviewer, session)

    release = threading.Event()
    fake.add(
        Step(text="Listing the files.", hold=release, calls=[{"commands": ["echo api-was-here"]}]),
        Step(text="Done listing."),
    )
    answers: list[Any] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            client.responses.create(
                model=MODEL,
                input="List <b>the</b> files",
                tools=[{"type": "shell", "environment": {"type": "container_reference",
                                                         "container_id": box.id}}],
            )
        )
    )  # fmt: skip
    caller.start()
    request = reviewer.locator(".cell-prompt .api-request")
    request.wait_for(timeout=60_000)
    assert "API request via key ci" in (request.text_content() or "")
    assert "List <b>the</b> files" in (request.locator("pre").first.text_content() or "")
    reviewer.wait_for_selector(".cell-prompt .agent-steps:has-text('Listing')", timeout=60_000)
    screenshot(reviewer, "1-streaming")
    release.set()
    output = ".cell-prompt .agent-output:has-text('api-was-here')"
    reviewer.wait_for_selector(output, timeout=60_000)
    reviewer.wait_for_selector(".cell-prompt .cell-state[data-status=finished]", timeout=60_000)
    caller.join(60)
    assert answers and answers[0].output_text == "Listing the files.Done listing."
    screenshot(reviewer, "2-finished")
    # A reload renders the request from the database, once.
    reviewer.reload()
    reviewer.wait_for_selector("#connection[data-state=live]")
    assert request.count() == 1
    assert "API request via key ci" in (request.text_content() or "")
    assert not reviewer.errors
