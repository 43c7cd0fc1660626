"""Downloads from the file panel: streamed out of the sandbox in chunks, from a stopped
container too, never starting one, and refused above the site's cap with a clear message."""

from __future__ import annotations

import hashlib
import urllib.request
import uuid
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from agentide.events.models import Event
from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.backends.docker import FILE_CHUNK_BYTES
from agentide.sandboxes.models import Sandbox

pytestmark = pytest.mark.django_db


def run(session: Any, command: str) -> str:
    out: list[bytes] = []
    result = sandboxes.run_command(
        session, command, command_id=uuid.uuid4().hex, on_output=lambda _s, data: out.append(data),
        admission=sandbox_admission(session),
    )
    assert result.exit_code == 0, out
    return b"".join(out).decode()


def download(personas: Any, session: Any, path: str, who: str = "reviewer") -> Any:
    client = Client()
    client.force_login(getattr(personas, who))
    return client.get(reverse("file_download", args=[session.pk]), {"path": path})


def state(session: Any) -> str:
    return str(Sandbox.objects.get(session=session).state)


def test_a_reviewer_downloads_from_a_stopped_sandbox_without_starting_it(personas, session):
    run(session, "mkdir -p out && printf 'report\\n' > out/r.txt")
    sandboxes.stop_sandbox(session)
    assert state(session) == Sandbox.State.STOPPED
    events_before = Event.objects.filter(session=session).count()

    response = download(personas, session, "out/r.txt")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"report\n"
    assert response["Content-Length"] == "7"
    assert response["Content-Disposition"] == 'attachment; filename="r.txt"'
    assert state(session) == Sandbox.State.STOPPED
    assert Event.objects.filter(session=session).count() == events_before


def test_a_session_without_a_container_says_so_and_creates_none(personas, session):
    response = download(personas, session, "anything.txt")
    assert response.status_code == 409
    assert b"no container to read files from" in response.content
    assert not Sandbox.objects.filter(session=session).exists()


def test_missing_files_are_404_and_paths_stay_in_the_workspace(personas, session):
    run(session, "true")
    assert download(personas, session, "nope.txt").status_code == 404
    assert download(personas, session, "../../etc/passwd").status_code == 404


def test_a_file_above_the_site_cap_gets_a_clear_message(personas, session, settings):
    settings.AGENTIDE_MAX_DOWNLOAD_MB = 1
    run(session, "head -c 3000000 /dev/zero > big.bin")
    response = download(personas, session, "big.bin", who="member")
    assert response.status_code == 403
    text = response.content.decode()
    assert "big.bin is 2.9 MiB; downloads are limited to 1 MiB" in text


def test_a_large_file_under_the_cap_streams_in_bounded_chunks(personas, session, settings):
    settings.AGENTIDE_MAX_DOWNLOAD_MB = 64
    size = 40_000_000
    digest = run(session, f"head -c {size} /dev/urandom > big.bin && sha256sum big.bin")
    response = download(personas, session, "big.bin")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Length"] == str(size)
    sha, total, chunks, largest = hashlib.sha256(), 0, 0, 0
    for chunk in response.streaming_content:
        sha.update(chunk)
        total += len(chunk)
        chunks += 1
        largest = max(largest, len(chunk))
    response.close()
    assert total == size and digest.split()[0] == sha.hexdigest()
    # Never the whole file at once: pieces of at most the transfer chunk.
    assert largest <= FILE_CHUNK_BYTES and chunks >= size // FILE_CHUNK_BYTES


def test_through_daphne_the_download_streams_asynchronously(personas, session, daphne_server):
    # Under ASGI a plain iterator would be collected into a list before sending: the view
    # hands Daphne an async iterator instead. This takes that path, end to end.
    size = 20_000_000
    digest = run(session, f"head -c {size} /dev/urandom > big.bin && sha256sum big.bin")
    client = Client()
    client.force_login(personas.reviewer)
    url = f"{daphne_server.url}{reverse('file_download', args=[session.pk])}?path=big.bin"
    request = urllib.request.Request(
        url, headers={"Cookie": f"sessionid={client.cookies['sessionid'].value}"}
    )
    sha, total = hashlib.sha256(), 0
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)
        while piece := response.read(FILE_CHUNK_BYTES):
            sha.update(piece)
            total += len(piece)
    assert total == size and digest.split()[0] == sha.hexdigest()
