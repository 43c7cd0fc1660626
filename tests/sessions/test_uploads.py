"""Request bodies are bounded before and while they are read: Content-Length first, then a
counting upload handler; a refused upload answers 413 with the limit and keeps nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import services as sandboxes
from agentide.sessions.models import Cell, Session

pytestmark = pytest.mark.django_db


def member_client(personas: Any) -> Client:
    client = Client()
    client.force_login(personas.member)
    return client


def upload(personas: Any, session: Any, name: str, size: int) -> Any:
    return member_client(personas).post(
        reverse("file_upload", args=[session.pk]),
        {"path": "", "file": SimpleUploadedFile(name, b"u" * size)},
        HTTP_HX_REQUEST="true",
    )


def files_in_workspace(session: Any) -> str:
    out: list[bytes] = []
    sandboxes.run_command(session, "ls -A", command_id=uuid.uuid4().hex,
                          admission=sandbox_admission(session),
                          on_output=lambda _s, data: out.append(data))
    return b"".join(out).decode()


def test_an_upload_whose_content_length_is_over_the_limit_is_refused(personas, session, settings):
    settings.AGENTIDE_SANDBOX_MAX_WRITE_BYTES = 100_000
    response = upload(personas, session, "huge.bin", 3_000_000)
    assert response.status_code == 413
    body = response.content.decode()
    assert "Too large: this form takes at most 97.7 KiB. Nothing was uploaded." in body
    assert 'id="files"' in body  # the files panel, with the message in it
    assert "huge.bin" not in files_in_workspace(session)


def test_an_upload_over_the_limit_is_stopped_while_it_is_read(personas, session, settings):
    # Inside the Content-Length allowance (the limit plus the form fields' own limit), so the
    # counting handler is what stops it.
    settings.AGENTIDE_SANDBOX_MAX_WRITE_BYTES = 100_000
    response = upload(personas, session, "sneaky.bin", 150_000)
    assert response.status_code == 413
    assert "Nothing was uploaded" in response.content.decode()
    assert "sneaky.bin" not in files_in_workspace(session)


def test_an_upload_within_the_limit_lands_in_the_workspace(personas, session, settings):
    settings.AGENTIDE_SANDBOX_MAX_WRITE_BYTES = 100_000
    # Bigger than FILE_UPLOAD_MAX_MEMORY_SIZE would spool to disk; this one stays in memory.
    response = upload(personas, session, "fits.bin", 99_000)
    assert response.status_code == 200
    listing = files_in_workspace(session)
    assert "fits.bin" in listing


def test_an_upload_spooled_to_disk_is_streamed_into_the_workspace(personas, session, settings):
    settings.AGENTIDE_SANDBOX_MAX_WRITE_BYTES = 8 * 1024 * 1024
    size = settings.FILE_UPLOAD_MAX_MEMORY_SIZE * 3
    response = upload(personas, session, "spooled.bin", size)
    assert response.status_code == 200
    out: list[bytes] = []
    sandboxes.run_command(session, "stat -c %s spooled.bin", command_id=uuid.uuid4().hex,
                          admission=sandbox_admission(session),
                          on_output=lambda _s, data: out.append(data))
    assert b"".join(out).decode().strip() == str(size)


def test_reviewers_are_refused_even_when_the_upload_is_too_large(personas, session, settings):
    settings.AGENTIDE_SANDBOX_MAX_WRITE_BYTES = 100_000
    client = Client()
    client.force_login(personas.reviewer)
    response = client.post(
        reverse("file_upload", args=[session.pk]),
        {"file": SimpleUploadedFile("x.bin", b"x" * 3_000_000)},
    )
    assert response.status_code == 403


def test_a_transcript_over_the_import_limit_is_refused_with_the_limit(personas, project, settings):
    settings.TRANSCRIPT_IMPORT_MAX_BYTES = 4096
    sessions_before = Session.objects.count()
    response = member_client(personas).post(
        reverse("transcript_import", args=["acme"]),
        {"project": project.pk, "file": SimpleUploadedFile("t.jsonl", b"{}\n" * 300_000)},
    )
    assert response.status_code == 413
    body = response.content.decode()
    assert "Too large: this form takes at most 4 KiB" in body and "<form" in body
    assert Session.objects.count() == sessions_before


def test_views_that_take_no_files_take_no_big_bodies(personas, session, settings):
    response = member_client(personas).post(
        reverse("cell_create", args=[session.pk]),
        {"kind": "shell", "source": "ls",
         "file": SimpleUploadedFile("x.bin", b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1))},
    )
    assert response.status_code == 413
    assert not Cell.objects.filter(session=session).exists()
