"""Sandbox services: lifecycle through the database, warm pool, idle stop, reconcile."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone
from sandbox_support import IMAGE

from agentide.events import registry
from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import services
from agentide.sandboxes.backends.base import SandboxError, SandboxNotRunning, SandboxSpec
from agentide.sandboxes.backends.docker import DockerBackend
from agentide.sandboxes.models import Sandbox

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def test_site(sandbox_image: str) -> Iterator[str]:
    """A sandbox site of its own for each test, emptied afterwards."""
    site = f"test-{uuid.uuid4().hex[:8]}"
    with override_settings(AGENTIDE_SANDBOX_SITE=site, AGENTIDE_SANDBOX_IMAGE=sandbox_image,
                           AGENTIDE_SANDBOX_WARM_POOL_SIZE=0):
        yield site
        services.purge_site_sandboxes()


@pytest.fixture
def session() -> Any:
    from agentide.accounts.models import Team
    from agentide.projects.models import Project
    from agentide.sessions.models import Session

    team = Team.objects.create(name=f"T {uuid.uuid4().hex[:6]}", slug=uuid.uuid4().hex[:10])
    project = Project.objects.create(team=team, name="P", slug="p", sandbox_memory_mb=256,
                                     sandbox_pids_limit=128, sandbox_tmp_mb=16,
                                     command_timeout_s=30)
    return Session.objects.create(project=project, title="S")


def _run(session: Any, command: str, **kwargs: Any) -> tuple[services.ExecResult, str]:
    chunks: list[bytes] = []
    result = services.run_command(session, command, command_id=uuid.uuid4().hex,
                                  admission=sandbox_admission(session),
                                  on_output=lambda stream, data: chunks.append(data), **kwargs)
    return result, b"".join(chunks).decode()


def _states(session: Any) -> list[str]:
    from agentide.events.models import Event

    return [e.payload["state"] for e in
            Event.objects.filter(session=session, type=registry.SANDBOX_STATE).order_by("seq")]


def test_a_sandbox_is_created_on_first_need_and_reused(session: Any) -> None:
    assert not Sandbox.objects.filter(session=session).exists()
    assert services.list_files(session).entries == []  # a listing does not create one

    result, out = _run(session, "echo hi > f; cat f")
    assert (result.outcome, out) == ("exit", "hi\n")
    sandbox = Sandbox.objects.get(session=session)
    assert sandbox.state == Sandbox.State.RUNNING
    assert sandbox.limits["memory_mb"] == 256

    _run(session, "true")
    assert Sandbox.objects.get(session=session).container_id == sandbox.container_id
    assert _states(session) == ["running"]
    listing = {s.container_id: s for s in services.get_backend().list_sandboxes()}
    assert listing[sandbox.container_id].labels["session"] == str(session.pk)
    assert listing[sandbox.container_id].labels["team"] == str(session.project.team_id)


def test_a_stopped_sandbox_restarts_transparently_with_its_workspace(session: Any) -> None:
    _run(session, "mkdir -p w && cd w && echo kept > f && export KEEP=1")
    services.stop_sandbox(session)
    assert Sandbox.objects.get(session=session).state == Sandbox.State.STOPPED
    assert services.sandbox_stats(session) is None

    _, out = _run(session, "pwd; cat f; echo $KEEP")
    assert out.splitlines() == ["/workspace/w", "kept", "1"]
    assert _states(session) == ["running", "stopped", "running"]


def test_a_container_stopped_behind_the_rows_back_is_restarted(session: Any) -> None:
    _run(session, "true")
    sandbox = Sandbox.objects.get(session=session)
    services.get_backend().stop(sandbox.handle)  # the row still says running
    _, out = _run(session, "echo again")
    assert out == "again\n"


def test_a_vanished_container_is_recreated_keeping_its_volume(session: Any) -> None:
    _run(session, "echo survivor > f")
    sandbox = Sandbox.objects.get(session=session)
    backend = services.get_backend()
    assert isinstance(backend, DockerBackend)
    backend.client.containers.get(sandbox.container_id).remove(force=True)

    _, out = _run(session, "cat f")
    assert out == "survivor\n"
    assert Sandbox.objects.get(session=session).container_id != sandbox.container_id


def test_idle_sandboxes_are_stopped_and_busy_ones_are_not(session: Any) -> None:
    _run(session, "true")
    now = timezone.now()
    with override_settings(AGENTIDE_SANDBOX_IDLE_STOP_S=600):
        assert services.stop_idle_sandboxes(now=now) == 0
        assert services.stop_idle_sandboxes(now=now + dt.timedelta(seconds=601)) == 1
    assert Sandbox.objects.get(session=session).state == Sandbox.State.STOPPED


def test_listing_a_stopped_sandbox_says_so_and_never_starts_it(session: Any) -> None:
    _run(session, "touch kept")
    services.stop_sandbox(session)
    events = len(_states(session))
    with pytest.raises(SandboxNotRunning) as refused:
        services.list_files(session)
    assert refused.value.message == services.NOT_RUNNING
    sandbox = Sandbox.objects.get(session=session)
    assert sandbox.state == Sandbox.State.STOPPED
    assert not services.get_backend().is_running(sandbox.handle)
    assert len(_states(session)) == events  # no start recorded either


def test_a_running_command_keeps_its_sandbox_busy(session: Any) -> None:
    seen: list[Any] = []

    def on_output(stream: str, data: bytes) -> None:
        seen.append(Sandbox.objects.get(session=session).last_activity_at)

    services.run_command(session, "echo tick", command_id="busy-1",
                         admission=sandbox_admission(session), timeout_s=20,
                         on_output=on_output)
    assert seen[0] > timezone.now() + dt.timedelta(seconds=15)


def test_destroy_removes_container_and_volume(session: Any) -> None:
    _run(session, "true")
    sandbox = Sandbox.objects.get(session=session)
    services.destroy_sandbox(session)
    assert Sandbox.objects.get(session=session).state == Sandbox.State.DESTROYED
    backend = services.get_backend()
    assert sandbox.container_id not in {s.container_id for s in backend.list_sandboxes()}
    assert sandbox.volume not in backend.list_volumes()
    _, out = _run(session, "ls /workspace | wc -l")  # a fresh one on next need
    assert out.strip() == "0"


def test_files_through_the_services(session: Any) -> None:
    services.write_file(session, "up.txt", b"data", admission=sandbox_admission(session))
    assert services.read_file(session, "up.txt") == b"data"
    assert [e.name for e in services.list_files(session)] == ["up.txt"]
    with pytest.raises(SandboxError):
        services.read_file(session, "../etc/passwd")


def test_limits_are_clamped_to_the_site_ceilings(session: Any) -> None:
    project = session.project
    project.sandbox_memory_mb = 65536
    project.sandbox_cpus = Decimal("64")
    project.sandbox_pids_limit = 32768
    with override_settings(AGENTIDE_SANDBOX_MAX_MEMORY_MB=2048, AGENTIDE_SANDBOX_MAX_CPUS=1.5,
                           AGENTIDE_SANDBOX_MAX_PIDS=300, AGENTIDE_SANDBOX_MAX_TIMEOUT_S=100):
        limits = services.limits_for(project, sandbox_admission(session))
        assert (limits.memory_mb, limits.cpus, limits.pids_limit) == (2048, 1.5, 300)
        assert services.timeout_for(project, 10_000) == 100
    with override_settings(AGENTIDE_SANDBOX_ALLOWED_IMAGES=["ok:1"]):
        project.sandbox_image = "evil:latest"
        with pytest.raises(SandboxError):
            services.image_for(project)


def test_a_project_gets_only_the_site_image_unless_the_site_lists_others(
    session: Any, sandbox_image: str
) -> None:
    project = session.project
    project.sandbox_image = "evil:latest"  # what any project admin could type
    with pytest.raises(SandboxError, match="not allowed"):
        services.image_for(project)
    with pytest.raises(SandboxError, match="not allowed"):
        _run(session, "echo never")
    assert not Sandbox.objects.filter(session=session, state__in=Sandbox.LIVE).exists()
    project.sandbox_image = sandbox_image
    assert services.image_for(project) == sandbox_image
    with override_settings(AGENTIDE_SANDBOX_ALLOWED_IMAGES=["evil:latest"]):
        project.sandbox_image = "evil:latest"
        assert services.image_for(project) == "evil:latest"


def test_the_warm_pool_is_claimed_once_and_refilled(session: Any) -> None:
    from agentide.projects.models import Project
    from agentide.sessions.models import Session

    defaults = Project.objects.create(team=session.project.team, name="D", slug="d")
    first = Session.objects.create(project=defaults, title="1")
    second = Session.objects.create(project=defaults, title="2")
    with override_settings(AGENTIDE_SANDBOX_WARM_POOL_SIZE=1):
        assert services.refill_warm_pool() == 1
        assert services.refill_warm_pool() == 0
        member = Sandbox.objects.get(state=Sandbox.State.POOLED)

        claimed = services.ensure_sandbox(first, admission=sandbox_admission(first))
        assert claimed.pk == member.pk
        assert claimed.container_id == member.container_id
        _, out = _run(first, "echo warm")
        assert out == "warm\n"

        # The pool is empty now: the next session gets a new container.
        other = services.ensure_sandbox(second, admission=sandbox_admission(second))
        assert other.container_id != member.container_id
        assert services.refill_warm_pool() == 1


def test_the_first_command_after_a_pool_claim_inspects_the_container_once(
    session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim (is it running?), runner start (which runtime?) and the command's cancel token
    (the runner key label) all read one engine inspect of the container."""
    from agentide.projects.models import Project
    from agentide.sessions.models import Session

    defaults = Project.objects.create(team=session.project.team, name="D", slug="d")
    fresh = Session.objects.create(project=defaults, title="fresh")
    backend = services.get_backend()
    assert isinstance(backend, DockerBackend)
    inspected: list[str] = []
    real_inspect = backend.api.inspect_container

    def counting_inspect(container: str) -> Any:
        inspected.append(container)
        return real_inspect(container)

    with override_settings(AGENTIDE_SANDBOX_WARM_POOL_SIZE=1):
        assert services.refill_warm_pool() == 1
        member = Sandbox.objects.get(state=Sandbox.State.POOLED)
        monkeypatch.setattr(backend.api, "inspect_container", counting_inspect)
        _, out = _run(fresh, "echo warm")
    assert out == "warm\n"
    assert inspected == [member.container_id]
    services.destroy_sandbox(fresh)


def test_reconcile_removes_labelled_orphans_and_leaves_the_rest_alone(
    session: Any, test_site: str
) -> None:
    backend = services.get_backend()
    assert isinstance(backend, DockerBackend)
    _run(session, "true")
    live = Sandbox.objects.get(session=session)
    orphan = backend.create(SandboxSpec(image=IMAGE, labels={"session": "999999"}))
    elsewhere = DockerBackend(site=f"{test_site}-other").create(SandboxSpec(image=IMAGE))
    unlabelled = backend.client.containers.create(IMAGE, network_mode="none")
    try:
        # Within the grace period nothing is removed (it may be being created).
        assert services.reconcile().removed_containers == []

        later = timezone.now() + dt.timedelta(hours=1)
        report = services.reconcile(now=later)
        assert report.removed_containers == [orphan.container_id]
        assert orphan.volume not in backend.list_volumes()
        assert backend.is_running(live.handle)
        assert DockerBackend(site=f"{test_site}-other").is_running(elsewhere)
        unlabelled.reload()
        assert unlabelled.status == "created"
    finally:
        unlabelled.remove(force=True)
        DockerBackend(site=f"{test_site}-other").destroy(elsewhere)


def test_reconcile_removes_the_sandbox_of_a_deleted_session(session: Any) -> None:
    _run(session, "true")
    sandbox = Sandbox.objects.get(session=session)
    session.delete()
    services.reconcile()
    backend = services.get_backend()
    assert sandbox.container_id not in {s.container_id for s in backend.list_sandboxes()}
    assert not Sandbox.objects.filter(pk=sandbox.pk).exists()


def test_reconcile_marks_a_vanished_container_missing(session: Any) -> None:
    _run(session, "true")
    sandbox = Sandbox.objects.get(session=session)
    services.get_backend().destroy(sandbox.handle)
    report = services.reconcile(now=timezone.now() + dt.timedelta(hours=1))
    assert report.marked_missing == [sandbox.pk]
    assert Sandbox.objects.get(pk=sandbox.pk).state == Sandbox.State.MISSING
    assert _run(session, "echo back")[1] == "back\n"


def test_a_row_stuck_in_creating_is_released_by_reconcile(session: Any) -> None:
    Sandbox.objects.create(session=session, state=Sandbox.State.CREATING, image=IMAGE,
                           created_at=timezone.now() - dt.timedelta(hours=1))
    services.reconcile()
    assert Sandbox.objects.get(session=session).state == Sandbox.State.ERROR
    assert _run(session, "echo recovered")[1] == "recovered\n"
    assert Sandbox.objects.get(session=session).state == Sandbox.State.RUNNING


def test_sandboxes_past_their_maximum_age_are_removed(session: Any) -> None:
    _run(session, "true")
    sandbox = Sandbox.objects.get(session=session)
    with override_settings(AGENTIDE_SANDBOX_MAX_AGE_S=3600):
        assert services.reconcile().removed_containers == []
        report = services.reconcile(now=timezone.now() + dt.timedelta(hours=2))
    assert report.removed_containers == [sandbox.container_id]
    assert Sandbox.objects.get(pk=sandbox.pk).state == Sandbox.State.DESTROYED


def test_beat_tasks_call_the_services(session: Any) -> None:
    from agentide.sandboxes import tasks

    _run(session, "true")
    with override_settings(AGENTIDE_SANDBOX_WARM_POOL_SIZE=1):
        assert tasks.refill_warm_pool() == 1
    assert tasks.stop_idle_sandboxes() == 0
    assert tasks.reconcile_sandboxes() == {
        "removed_containers": 0, "removed_volumes": 0, "marked_missing": 0}
