"""Files of /v1/containers through the openai SDK: uploads land in the session's /workspace,
files made by commands show up, content comes back byte for byte."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from agentide.api.models import ApiContainer

Sdk = Callable[[str], openai.OpenAI]


@pytest.fixture(autouse=True)
def destroy_sandboxes(transactional_db: None) -> Iterator[None]:
    yield
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions.models import Session

    for session in Session.objects.all():
        sandboxes.destroy_sandbox(session)


def test_upload_list_retrieve_content_delete(sdk: Sdk, api_key: str) -> None:
    from agentide.quotas.services import sandbox_admission
    from agentide.sandboxes import services as sandboxes

    client = sdk(api_key)
    box = client.containers.create(name="files")
    data = os.urandom(300_000) + b"\x00\xff end"

    made = client.containers.files.create(box.id, file=("data.bin", data))
    assert made.id.startswith("cfile_")
    assert made.object == "container.file"
    assert made.container_id == box.id
    assert made.path == "/workspace/data.bin"
    assert made.bytes == len(data)
    assert made.source == "user"

    session = ApiContainer.objects.get(public_id=box.id).session
    assert sandboxes.read_file(session, "data.bin") == data  # in the session's workspace

    assert client.containers.files.retrieve(made.id, container_id=box.id).path == made.path
    content = client.containers.files.content.retrieve(made.id, container_id=box.id)
    assert content.read() == data

    # A file a command made is listed too, as the assistant's.
    sandboxes.run_command(session, "mkdir -p out && printf hello > out/made.txt",
                          command_id="test-made", admission=sandbox_admission(session),
                          on_output=lambda stream, chunk: None)
    listed = {f.path: f for f in client.containers.files.list(box.id)}
    assert set(listed) == {"/workspace/data.bin", "/workspace/out/made.txt"}
    made_by_command = listed["/workspace/out/made.txt"]
    assert made_by_command.source == "assistant" and made_by_command.bytes == 5
    assert client.containers.files.content.retrieve(
        made_by_command.id, container_id=box.id
    ).read() == b"hello"

    # Uploading the same name again replaces the file and keeps its id.
    again = client.containers.files.create(box.id, file=("data.bin", b"short"))
    assert again.id == made.id and again.bytes == 5
    assert sandboxes.read_file(session, "data.bin") == b"short"

    client.containers.files.delete(made.id, container_id=box.id)
    with pytest.raises(openai.NotFoundError):
        client.containers.files.retrieve(made.id, container_id=box.id)
    assert [f.path for f in client.containers.files.list(box.id)] == ["/workspace/out/made.txt"]
    result = sandboxes.run_command(session, "test -e data.bin", command_id="test-gone",
                                   admission=sandbox_admission(session),
                                   on_output=lambda stream, chunk: None)
    assert result.exit_code == 1


def test_file_ids_and_missing_files_are_refused(sdk: Sdk, api_key: str) -> None:
    client = sdk(api_key)
    box = client.containers.create(name="refusals")
    with pytest.raises(openai.BadRequestError) as caught:
        client.containers.files.create(box.id, file_id="file-abc123")
    assert caught.value.param == "file_id"
    assert "not supported" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.containers.files.create(box.id)
    assert caught.value.param == "file"


def test_an_upload_over_the_limit_is_refused_whole(sdk: Sdk, api_key: str) -> None:
    from django.conf import settings

    client = sdk(api_key)
    box = client.containers.create(name="big")
    too_big = b"x" * (int(settings.AGENTIDE_SANDBOX_MAX_WRITE_BYTES) + 1)
    with pytest.raises(openai.APIStatusError) as caught:
        client.containers.files.create(box.id, file=("big.bin", too_big))
    assert caught.value.status_code == 413
    assert "Nothing was uploaded" in caught.value.message
    assert client.containers.files.list(box.id).data == []


def test_another_containers_file_is_not_found(sdk: Sdk, api_key: str) -> None:
    client = sdk(api_key)
    first = client.containers.create(name="first")
    second = client.containers.create(name="second")
    file = client.containers.files.create(first.id, file=("a.txt", b"a"))
    with pytest.raises(openai.NotFoundError):
        client.containers.files.retrieve(file.id, container_id=second.id)
    with pytest.raises(openai.NotFoundError):
        client.containers.files.content.retrieve(file.id, container_id=second.id)


def test_a_quota_refusing_the_sandbox_start_is_a_rate_limit_error(
    sdk: Sdk, api_key: str, set_quota: Any
) -> None:
    client = sdk(api_key)
    box = client.containers.create(name="no sandbox")
    set_quota(max_running_sandboxes=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.containers.files.create(box.id, file=("a.txt", b"a"))
    assert "Quota exceeded" in caught.value.message
