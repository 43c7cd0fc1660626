"""The environment carried from one command to the next (issue 12 item 14): loader and
shell-startup variables are never persisted, and the persisted environment is bounded, so
no command can plant code in every later command or make them all fail to start."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from sandbox_support import run

from agentide.projects.models import Project
from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.backends.base import SandboxHandle
from agentide.sandboxes.backends.docker import DockerBackend
from agentide.sessions import execution, services


@pytest.fixture(scope="module")
def sandbox_runtime() -> str:
    """The runner's rules, under runc. Under gVisor commands run through the one-exec wrapper
    (tests/sandboxes/test_gvisor_commands.py checks that it refuses loader variables too)."""
    return ""


@pytest.fixture(autouse=True)
def _fresh_environment(backend: DockerBackend, sandbox: SandboxHandle) -> Iterator[None]:
    yield
    run(backend, sandbox, "rm -f /workspace/.agentide/env /workspace/.agentide/cwd "
                          "/workspace/evil.sh")


def test_loader_and_startup_variables_are_refused_with_a_notice(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    r = run(backend, sandbox,
            "echo 'echo INJECTED' > /workspace/evil.sh; export BASH_ENV=/workspace/evil.sh "
            "LD_PRELOAD=/nonexistent.so PROMPT_COMMAND=x KEEP_ME=1; echo ran")
    assert (r.result.outcome, r.result.exit_code, r.out) == ("exit", 0, "ran\n")
    assert set(r.result.env_refused) == {"BASH_ENV", "LD_PRELOAD", "PROMPT_COMMAND"}
    assert b"not kept for later commands: " in r.stderr
    assert b"BASH_ENV" in r.stderr and b"LD_PRELOAD" in r.stderr
    later = run(backend, sandbox, 'echo "${BASH_ENV-unset} ${LD_PRELOAD-unset} $KEEP_ME"')
    assert later.out == "unset unset 1\n"
    assert later.stderr == b""


def test_a_hand_written_environment_file_cannot_inject_either(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    run(backend, sandbox, "echo 'echo INJECTED' > /workspace/evil.sh")
    backend.write_file(sandbox, ".agentide/env",
                       b"BASH_ENV=/workspace/evil.sh\0LD_AUDIT=/x.so\0OK=yes\0",
                       max_bytes=1 << 20)
    r = run(backend, sandbox, 'echo "${OK}"')
    assert r.out == "yes\n"
    assert b"not kept from the saved environment: BASH_ENV, LD_AUDIT" in r.stderr


def test_an_oversized_environment_is_capped_when_saved(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    r = run(backend, sandbox,
            'export BIG=$(head -c 40000 /dev/zero | tr "\\0" x); '
            "for i in $(seq 1 300); do export V$i=$i; done; echo set")
    assert r.out == "set\n", r
    assert r.result.env_dropped > 0
    assert b"persisted environment is capped" in r.stderr
    later = run(backend, sandbox, 'echo "ok ${#BIG} $V1"')
    assert (later.result.exit_code, later.out) == (0, "ok 0 1\n")


def test_an_oversized_environment_file_does_not_stop_later_commands(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    # Past the kernel's limits, every command would fail to start (execve: E2BIG).
    big = b"BIG=" + b"x" * 200_000 + b"\0" + b"".join(
        b"V%d=%d\0" % (i, i) for i in range(5000))
    backend.write_file(sandbox, ".agentide/env", big * 12, max_bytes=10 << 20)
    r = run(backend, sandbox, "echo ok")
    assert (r.result.outcome, r.result.exit_code, r.out) == ("exit", 0, "ok\n"), r
    assert b"persisted environment is capped" in r.stderr


@pytest.mark.django_db(transaction=True)
def test_the_session_page_shows_the_persisted_environment(
    client: Client, personas: Any, sandbox_image: str
) -> None:
    project = Project.objects.create(team=personas.team, name="Env", slug="env",
                                     created_by=personas.owner)
    member = personas.membership(personas.member)
    session = services.create_session(member, project, "Env")
    url = reverse("sandbox_details", args=[session.pk])
    try:
        client.force_login(personas.member)
        assert b"sandbox-details" in client.get(
            reverse("session_detail", args=[session.pk])).content
        assert b"not running" in client.get(url).content  # showing it starts nothing

        execution.submit_cell(member, session, "shell",
                             "export GREETING=hello LD_PRELOAD=/x.so; true")
        cell = execution.claim_next_cell(session.pk, worker="test")
        assert cell is not None
        execution.run_claimed_cell(cell)
        page = client.get(url).content.decode()
        assert "<code>GREETING</code>=<code>hello</code>" in page
        assert "<code>LD_PRELOAD</code>=" not in page

        sandboxes.write_file(session, ".agentide/env", b"GREETING=hi\0LD_AUDIT=/x.so\0",
                             admission=sandbox_admission(session))
        page = client.get(url).content.decode()
        assert "Refused, not given to commands: LD_AUDIT" in page

        client.force_login(personas.reviewer)
        page = client.get(url).content.decode()
        assert "<li><code>GREETING</code></li>" in page and "<code>hi</code>" not in page
        client.force_login(personas.outsider)
        assert client.get(url).status_code == 404
    finally:
        sandboxes.destroy_sandbox(session)


@pytest.fixture(scope="module")
def runnerless_sandbox(
    backend: DockerBackend, sandbox_image: str, make_sandbox: Any
) -> Iterator[SandboxHandle]:
    """A sandbox of an image without the runner: one exec per command, the wrapper loads
    the environment itself."""
    tag = f"agentide-test-norunner-env:{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {sandbox_image}\nUSER root\nRUN rm -rf /opt/agentide\nUSER agent\n"
    backend.client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True,
                                network_mode="none")
    handle = make_sandbox(tag)
    yield handle
    backend.destroy(handle)
    backend.client.images.remove(tag, force=True)


def test_without_the_runner_the_same_variables_are_refused_and_bounded(
    backend: DockerBackend, runnerless_sandbox: SandboxHandle
) -> None:
    run(backend, runnerless_sandbox, "export LD_PRELOAD=/x.so BASH_ENV=/x.sh KEEP=1")
    assert runnerless_sandbox.container_id in backend._no_runner
    r = run(backend, runnerless_sandbox, 'echo "${LD_PRELOAD-unset} ${BASH_ENV-unset} $KEEP"')
    assert r.out == "unset unset 1\n"
    assert b"not kept from the saved environment: LD_PRELOAD BASH_ENV" in r.stderr

    big = b"BIG=" + b"x" * 200_000 + b"\0" + b"".join(b"V%d=%d\0" % (i, i) for i in range(3000))
    backend.write_file(runnerless_sandbox, ".agentide/env", big, max_bytes=10 << 20)
    r = run(backend, runnerless_sandbox, 'echo "ok ${#BIG} $V0"', timeout_s=60)
    assert (r.result.exit_code, r.out) == (0, "ok 0 0\n"), r
