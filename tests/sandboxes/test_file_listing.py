"""Bounded directory listings: a directory of many files never reaches the web process whole,
and the file panel says when it shows only part of one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from django.urls import reverse
from sandbox_support import run

from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import services
from agentide.sandboxes.backends.base import SandboxHandle
from agentide.sandboxes.backends.docker import DockerBackend, _read_records

MANY = 3000


@pytest.fixture(scope="module")
def crowded(backend: DockerBackend, sandbox: SandboxHandle) -> SandboxHandle:
    r = run(backend, sandbox, f"mkdir -p many long && cd many && touch $(seq -f 'f%05g' 1 {MANY})"
                              " && cd ../long && for i in $(seq 1 300); do"
                              " : > \"$(printf 'n%03d-%0200d' $i 0)\"; done")
    assert r.result.exit_code == 0, r.stderr
    return sandbox


def test_a_listing_stops_at_the_entry_cap(backend: DockerBackend, crowded: SandboxHandle) -> None:
    listing = backend.list_dir(crowded, "many", max_entries=1000)
    assert listing.truncated
    assert len(listing) == 1000
    assert all(e.name.startswith("f") and e.path == f"many/{e.name}" for e in listing)


def test_a_listing_under_the_caps_is_whole(
    backend: DockerBackend, crowded: SandboxHandle
) -> None:
    listing = backend.list_dir(crowded, "many")
    assert not listing.truncated
    assert sorted(e.name for e in listing) == [f"f{i:05d}" for i in range(1, MANY + 1)]


def test_a_listing_stops_at_the_byte_cap(backend: DockerBackend, crowded: SandboxHandle) -> None:
    # Each record is ~240 bytes: 8 KiB holds about 34 of the 300 names.
    listing = backend.list_dir(crowded, "long", max_bytes=8192)
    assert listing.truncated
    assert 0 < len(listing) < 40
    assert all(len(e.name) == 205 for e in listing)  # no record cut in half


def test_reading_stops_at_the_cap_without_draining_the_stream() -> None:
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"f\t1\t0\tname\0" * 100

    records, truncated = _read_records(endless(), 50, 1 << 20)
    assert truncated
    assert len(records) == 50
    assert pulled == 1


@pytest.mark.django_db
def test_the_file_panel_says_the_listing_was_truncated(
    client: Any, personas: Any, sandbox_image: str
) -> None:
    from agentide.projects.models import Project
    from agentide.sessions.models import Session

    site = f"test-{uuid.uuid4().hex[:8]}"
    with override_settings(AGENTIDE_SANDBOX_SITE=site, AGENTIDE_SANDBOX_IMAGE=sandbox_image,
                           AGENTIDE_SANDBOX_WARM_POOL_SIZE=0,
                           AGENTIDE_SANDBOX_MAX_LIST_ENTRIES=50):
        project = Project.objects.create(team=personas.team, name="P", slug="p",
                                         sandbox_memory_mb=256, sandbox_pids_limit=128,
                                         sandbox_tmp_mb=16, command_timeout_s=30)
        session = Session.objects.create(project=project, title="S")
        try:
            services.run_command(session, "touch $(seq -f 'g%03g' 1 120)",
                                 command_id=uuid.uuid4().hex, on_output=lambda s, d: None,
                                 admission=sandbox_admission(session))
            client.force_login(personas.member)
            url = reverse("session_files", args=[session.pk])

            page = client.get(url).content.decode()
            assert "Listing truncated" in page
            assert page.count('class="file-file"') <= 50

            services.run_command(session, "rm g0*", command_id=uuid.uuid4().hex,
                                 admission=sandbox_admission(session),
                                 on_output=lambda s, d: None)
            page = client.get(url).content.decode()
            assert "Listing truncated" not in page
            assert page.count('class="file-file"') == 21
        finally:
            services.purge_site_sandboxes()
