"""Processes that outlive their cell (issue 12 item 17).

Policy: background processes may outlive the cell that started them (people start servers);
the cell's result says how many are still running; and a new command always gets room to
start: when the pids limit is used up, the runner kills the processes of finished commands
and tries once more.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from sandbox_support import run, wait_for

from agentide.projects.models import Project
from agentide.sandboxes import services as sandboxes
from agentide.sandboxes.backends.base import SandboxHandle
from agentide.sandboxes.backends.docker import DockerBackend
from agentide.sessions import execution, services


@pytest.fixture(scope="module")
def sandbox_runtime() -> str:
    """The runner's own guarantees hold under runc (the engine's default). Under gVisor no
    runner is used: every command is its own exec (tests/sandboxes/test_gvisor_commands.py)."""
    return ""


# Forks until the pids limit refuses, every child holding its pid: the limit stays used up.
HOLDING_BOMB = """python3 -c '
import os, time
while True:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(1000)
        os._exit(0)
' ; echo filled"""


def _few_processes(backend: DockerBackend, sandbox: SandboxHandle) -> bool:
    out = run(backend, sandbox, "ps -e --no-headers | wc -l").out.strip()
    return out.isdigit() and int(out) < 10


def test_after_a_fork_bomb_that_holds_every_pid_the_next_cell_starts(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    bomb = run(backend, sandbox, HOLDING_BOMB, timeout_s=60)
    assert (bomb.result.outcome, bomb.out) == ("exit", "filled\n")
    assert bomb.result.leftover_processes > 50
    # The next cell starts, and has room to start processes of its own.
    r = run(backend, sandbox, "echo ok | cat", timeout_s=120)
    assert (r.result.outcome, r.result.exit_code, r.out) == ("exit", 0, "ok\n"), r
    assert b"reached its process limit; killed" in r.stderr
    wait_for(lambda: _few_processes(backend, sandbox), timeout_s=60, what="bomb gone")


def test_after_a_classic_fork_bomb_the_next_cell_starts(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    bomb = run(backend, sandbox, "bomb() { bomb | bomb & }; bomb", timeout_s=60)
    assert bomb.result.outcome == "exit"  # the shell ended; its processes did not
    # The very next cell runs (its start may take a while: it first clears the bomb).
    r = run(backend, sandbox, "echo ok | cat", timeout_s=120)
    assert (r.result.outcome, r.result.exit_code, r.out) == ("exit", 0, "ok\n"), r
    wait_for(lambda: _few_processes(backend, sandbox), timeout_s=60, what="bomb gone")


def test_a_cell_whose_processes_still_run_says_so_and_they_keep_running(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    command_id = f"cell-{uuid.uuid4().hex[:8]}"
    r = run(backend, sandbox, "sleep 301 & sleep 302 & echo started", command_id=command_id)
    assert (r.result.outcome, r.result.exit_code) == ("exit", 0)
    assert r.result.leftover_processes == 2
    assert b"agentide: 2 processes started by this command are still running" in r.stderr
    # Policy: they outlive the cell until someone stops them.
    assert run(backend, sandbox, "pgrep -c -f '^sleep 30[12]$'").out.strip() == "2"
    assert backend.cancel(sandbox, command_id)
    assert run(backend, sandbox, "pgrep -c -f '^sleep 30[12]$'").out.strip() == "0"


def test_a_cell_that_leaves_nothing_behind_says_nothing(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    r = run(backend, sandbox, "sleep 0.1 & wait; echo done")
    assert r.result.leftover_processes == 0
    assert r.stderr == b""


@pytest.mark.django_db(transaction=True)
def test_the_session_page_lists_leftovers_with_their_cell_and_kills_them(
    client: Client, personas: Any, sandbox_image: str
) -> None:
    project = Project.objects.create(team=personas.team, name="Bg", slug="bg",
                                     created_by=personas.owner)
    member = personas.membership(personas.member)
    session = services.create_session(member, project, "Bg")
    url = reverse("sandbox_details", args=[session.pk])
    kill = reverse("sandbox_kill_leftovers", args=[session.pk])
    try:
        execution.submit_cell(member, session, "shell", "sleep 303 & echo started")
        cell = execution.claim_next_cell(session.pk, worker="test")
        assert cell is not None
        execution.run_claimed_cell(cell)

        client.force_login(personas.reviewer)
        page = client.get(url).content.decode()
        assert "<code>sleep 303</code>" in page and f'href="#{cell.command_id}"' in page
        assert "Kill" not in page
        assert client.post(kill, {"command_id": cell.command_id}).status_code == 403

        client.force_login(personas.member)
        assert "Kill" in client.get(url).content.decode()
        page = client.post(kill, {"command_id": cell.command_id}).content.decode()
        assert "<code>sleep 303</code>" not in page
        assert sandboxes.leftover_processes(session) == []
    finally:
        sandboxes.destroy_sandbox(session)
