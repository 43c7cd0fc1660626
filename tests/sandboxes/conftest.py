"""Fixtures for sandbox tests: a real Docker engine, the real sandbox image.

Containers are module-scoped and shared by the tests of a module (creating one costs
~0.3 s); tests that damage their container's state clean up after themselves.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest
from sandbox_support import IMAGE, REPO, TEST_LIMITS

from agentide.sandboxes.backends.base import SandboxHandle, SandboxSpec
from agentide.sandboxes.backends.docker import DockerBackend


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """The sandbox image, built (or found up to date) by compose/sandbox/build.sh."""
    subprocess.run(
        ["bash", str(REPO / "compose/sandbox/build.sh")],
        check=True,
        env={**os.environ, "AGENTIDE_SANDBOX_IMAGE": IMAGE},
    )
    return IMAGE


@pytest.fixture(scope="module")
def backend() -> DockerBackend:
    # A site of its own: nothing else's reconcile touches these containers, and ours
    # touch nothing else.
    return DockerBackend(site=f"test-{uuid.uuid4().hex[:8]}")


def _make(backend: DockerBackend, image: str, session: str) -> SandboxHandle:
    return backend.create(
        SandboxSpec(image=image, limits=TEST_LIMITS,
                    labels={"team": "0", "project": "0", "session": session,
                            "test": "sandboxes"})
    )


@pytest.fixture(scope="module")
def sandbox(backend: DockerBackend, sandbox_image: str) -> Iterator[SandboxHandle]:
    handle = _make(backend, sandbox_image, f"test-a-{uuid.uuid4().hex[:8]}")
    yield handle
    backend.destroy(handle)


@pytest.fixture(scope="module")
def other_sandbox(backend: DockerBackend, sandbox_image: str) -> Iterator[SandboxHandle]:
    handle = _make(backend, sandbox_image, f"test-b-{uuid.uuid4().hex[:8]}")
    yield handle
    backend.destroy(handle)


@pytest.fixture(scope="module")
def make_sandbox(
    backend: DockerBackend, sandbox_image: str
) -> Iterator[Callable[..., SandboxHandle]]:
    """Factory for extra sandboxes (destroyed at the end of the module)."""
    made: list[SandboxHandle] = []

    def make(image: str | None = None) -> SandboxHandle:
        handle = _make(backend, image or sandbox_image, f"test-x-{uuid.uuid4().hex[:8]}")
        made.append(handle)
        return handle

    yield make
    for handle in made:
        backend.destroy(handle)
