"""Fixtures for sandbox tests: a real Docker engine, the real sandbox image.

Containers are module-scoped and shared by the tests of a module (creating one costs
~0.3 s); tests that damage their container's state clean up after themselves.

Every test that uses a sandbox runs twice, under runc (the engine's default runtime) and
under gVisor's runsc: ``sandbox_runtime`` is a module-scoped parameter, so each module's
containers are made once per runtime.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from django.conf import settings
from sandbox_support import IMAGE, REPO, RUNTIMES, TEST_LIMITS, Screen

from agentide.sandboxes.backends.base import SandboxHandle, SandboxSpec
from agentide.sandboxes.backends.docker import DockerBackend
from agentide.sandboxes.backends.workspace_disk import WorkspaceDisk


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """The sandbox image, built (or found up to date) by compose/sandbox/build.sh."""
    subprocess.run(
        ["bash", str(REPO / "compose/sandbox/build.sh")],
        check=True,
        env={**os.environ, "AGENTIDE_SANDBOX_IMAGE": IMAGE},
    )
    _remove_leftovers_of_interrupted_runs()
    return IMAGE


def _remove_leftovers_of_interrupted_runs() -> None:
    """Containers and volumes of test/bench sites older than an hour: a run that was killed
    never reached its teardown. Live runs (younger) and real sites are left alone."""
    client = DockerBackend().client
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)

    def stale(labels: dict[str, str]) -> bool:
        site = labels.get("org.agentide.site", "")
        created = labels.get("org.agentide.created", "")
        return (site.startswith(("test-", "bench-")) and bool(created)
                and dt.datetime.fromisoformat(created) < cutoff)

    for container in client.containers.list(all=True, filters={"label": "org.agentide.app"}):
        if stale(container.labels):
            container.remove(force=True)
    for volume in client.volumes.list(filters={"label": "org.agentide.app"}):
        if stale(volume.attrs.get("Labels") or {}):
            volume.remove(force=True)
    # Their workspace images (mounted, each holding a loop device) go too.
    root = Path(settings.AGENTIDE_SANDBOX_WORKSPACE_DIR)
    for site in root.glob("test-*") if root.is_dir() else []:
        if dt.datetime.fromtimestamp(site.stat().st_mtime, dt.UTC) < cutoff:
            for volume_dir in site.iterdir():
                WorkspaceDisk(root, site.name, volume_dir.name).release()
            site.rmdir()


@pytest.fixture(scope="module")
def backend() -> DockerBackend:
    # A site of its own: nothing else's reconcile touches these containers, and ours
    # touch nothing else.
    return DockerBackend(site=f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module", params=list(RUNTIMES.values()), ids=list(RUNTIMES))
def sandbox_runtime(request: pytest.FixtureRequest) -> str:
    """The OCI runtime of this module's sandboxes ("" = the engine's default, runc)."""
    runtime: str = request.param
    return runtime


def _make(backend: DockerBackend, image: str, session: str, runtime: str) -> SandboxHandle:
    return backend.create(
        SandboxSpec(image=image, limits=replace(TEST_LIMITS, runtime=runtime),
                    labels={"team": "0", "project": "0", "session": session,
                            "test": "sandboxes"})
    )


@pytest.fixture(scope="module")
def sandbox(
    backend: DockerBackend, sandbox_image: str, sandbox_runtime: str
) -> Iterator[SandboxHandle]:
    handle = _make(backend, sandbox_image, f"test-a-{uuid.uuid4().hex[:8]}", sandbox_runtime)
    yield handle
    backend.destroy(handle)


@pytest.fixture(scope="module")
def other_sandbox(
    backend: DockerBackend, sandbox_image: str, sandbox_runtime: str
) -> Iterator[SandboxHandle]:
    handle = _make(backend, sandbox_image, f"test-b-{uuid.uuid4().hex[:8]}", sandbox_runtime)
    yield handle
    backend.destroy(handle)


@pytest.fixture(scope="module")
def make_sandbox(
    backend: DockerBackend, sandbox_image: str, sandbox_runtime: str
) -> Iterator[Callable[..., SandboxHandle]]:
    """Factory for extra sandboxes (destroyed at the end of the module)."""
    made: list[SandboxHandle] = []

    def make(image: str | None = None) -> SandboxHandle:
        handle = _make(backend, image or sandbox_image, f"test-x-{uuid.uuid4().hex[:8]}",
                       sandbox_runtime)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        backend.destroy(handle)


@pytest.fixture
def terminal(backend: DockerBackend, sandbox: SandboxHandle) -> Iterator[Screen]:
    """An open terminal in the module's sandbox whose login shell is ready; closed after."""
    pty = backend.open_pty(sandbox, f"term-{uuid.uuid4().hex[:8]}", rows=24, cols=80)
    screen = Screen(backend, pty)
    backend.write_pty(pty, b"echo ready-$((1+1))\r")
    screen.until("ready-2")  # the login shell has read its profile
    yield screen
    if not screen.closed:
        backend.close_pty(pty)
        screen.until_closed()
