"""Size-limited workspaces: a loop-mounted ext4 image per workspace, on a real engine.

The backend here is the one services use, with limits on (``workspace_disk="ext4"``); the
commands go through its normal exec path as the sandbox user.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from sandbox_support import TEST_LIMITS, run

from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import services
from agentide.sandboxes.backends.base import SandboxError, SandboxHandle, SandboxSpec
from agentide.sandboxes.backends.docker import DockerBackend
from agentide.sandboxes.backends.workspace_disk import WorkspaceDisk
from agentide.sandboxes.backends.workspace_disk_server import (
    WorkspaceDiskServer,
    WorkspaceDiskService,
)

DISK_LIMITS = replace(TEST_LIMITS, disk_mb=16)
FILL = ("i=0; while :; do i=$((i+1)); printf 'xxxxxxxxxxxxxxxx' > f$i "
        "|| { echo \"stopped at $i\"; exit 3; }; done")


@pytest.fixture(scope="module")
def disk_root() -> Path:
    # Where services put them too: the leftovers of an interrupted run are removed from there.
    return Path(services.conf.workspace_dir())


@pytest.fixture(scope="module")
def disk_backend(disk_root: Path) -> DockerBackend:
    return DockerBackend(site=f"test-{uuid.uuid4().hex[:8]}", workspace_disk="ext4",
                         workspace_dir=str(disk_root))


@pytest.fixture(scope="module")
def disk_socket(disk_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The workspace disk service on a real unix socket, served by a thread of this process
    (root here, as the privileged compose service is)."""
    path = str(tmp_path_factory.mktemp("disks") / "disks.sock")
    server = WorkspaceDiskServer(path, WorkspaceDiskService(disk_root, max_mb=256))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def service_backend(disk_root: Path, disk_socket: str) -> DockerBackend:
    """A backend that mounts nothing itself: its disks come from the service (as compose's
    worker, which is not root on the engine's host)."""
    return DockerBackend(site=f"test-{uuid.uuid4().hex[:8]}", workspace_disk="ext4",
                         workspace_dir="", workspace_disk_socket=disk_socket)


@pytest.fixture(params=["in-process", "disk-service"])
def any_disk_backend(request: pytest.FixtureRequest) -> DockerBackend:
    name = "disk_backend" if request.param == "in-process" else "service_backend"
    backend: DockerBackend = request.getfixturevalue(name)
    return backend


@pytest.fixture
def make_any_disk_sandbox(
    any_disk_backend: DockerBackend, sandbox_image: str
) -> Iterator[Callable[..., SandboxHandle]]:
    made: list[SandboxHandle] = []

    def make(disk_mb: int = 16) -> SandboxHandle:
        handle = any_disk_backend.create(SandboxSpec(
            image=sandbox_image, limits=replace(DISK_LIMITS, disk_mb=disk_mb),
            labels={"team": "0", "project": "0", "session": f"disk-{uuid.uuid4().hex[:8]}",
                    "test": "workspace-disk"}))
        made.append(handle)
        return handle

    yield make
    for handle in made:
        any_disk_backend.destroy(handle)


@pytest.fixture(scope="module")
def make_disk_sandbox(
    disk_backend: DockerBackend, sandbox_image: str
) -> Iterator[Callable[..., SandboxHandle]]:
    made: list[SandboxHandle] = []

    def make(disk_mb: int = 16) -> SandboxHandle:
        handle = disk_backend.create(SandboxSpec(
            image=sandbox_image, limits=replace(DISK_LIMITS, disk_mb=disk_mb),
            labels={"team": "0", "project": "0", "session": f"disk-{uuid.uuid4().hex[:8]}",
                    "test": "workspace-disk"}))
        made.append(handle)
        return handle

    yield make
    for handle in made:
        disk_backend.destroy(handle)


def _disk(backend: DockerBackend, root: Path, handle: SandboxHandle) -> WorkspaceDisk:
    return WorkspaceDisk(root, backend.site, handle.volume)


def _mounted(path: Path) -> bool:
    mounts = Path("/proc/mounts").read_text().split("\n")
    return any(line.split(" ")[1:2] == [str(path)] for line in mounts if line)


def _loop_devices(image: Path) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                          check=True).stdout.strip()


def _size_kib(backend: DockerBackend, handle: SandboxHandle) -> int:
    r = run(backend, handle, "df -k --output=size /workspace | tail -1")
    return int(r.out.strip())


def test_a_full_workspace_says_no_space_left_and_spares_other_sessions(
    any_disk_backend: DockerBackend, make_any_disk_sandbox: Callable[..., SandboxHandle]
) -> None:
    disk_backend = any_disk_backend
    full, other = make_any_disk_sandbox(), make_any_disk_sandbox()
    assert _size_kib(disk_backend, full) <= 16 * 1024

    r = run(disk_backend, full, FILL, timeout_s=120)
    assert r.result.exit_code == 3, r.stderr
    assert b"No space left on device" in r.stderr

    # Another session's workspace is its own filesystem: it still writes.
    r = run(disk_backend, other, "printf ok > fine && cat fine")
    assert (r.result.exit_code, r.out) == (0, "ok")

    # Deleting files gives the space back.
    r = run(disk_backend, full, "find . -maxdepth 1 -name 'f*' -delete && echo again > g "
                                "&& cat g")
    assert (r.result.exit_code, r.out) == (0, "again\n")

    # Bytes are limited as well as inodes (the per-file limit here is 32 MiB).
    r = run(disk_backend, full, "head -c 20000000 /dev/zero > big; echo $?; rm -f big")
    assert r.out == "1\n"
    assert b"No space left on device" in r.stderr


def test_destroy_leaves_no_mount_and_no_loop_device(
    any_disk_backend: DockerBackend, disk_root: Path, sandbox_image: str
) -> None:
    disk_backend = any_disk_backend
    handle = disk_backend.create(SandboxSpec(image=sandbox_image, limits=DISK_LIMITS,
                                             labels={"test": "workspace-disk"}))
    disk = _disk(disk_backend, disk_root, handle)
    assert _mounted(disk.mountpoint)
    assert _loop_devices(disk.image)
    # What the container sees at /workspace is that filesystem.
    assert _size_kib(disk_backend, handle) <= 16 * 1024

    disk_backend.destroy(handle)

    assert not _mounted(disk.mountpoint)
    assert not _loop_devices(disk.image)
    assert not disk.dir.exists()
    assert handle.volume not in disk_backend.list_volumes()


def test_a_stopped_workspace_is_kept_and_mounted_again_after_a_reboot(
    any_disk_backend: DockerBackend, disk_root: Path,
    make_any_disk_sandbox: Callable[..., SandboxHandle]
) -> None:
    disk_backend, make_disk_sandbox = any_disk_backend, make_any_disk_sandbox
    handle = make_disk_sandbox()
    run(disk_backend, handle, "echo kept > note")
    disk_backend.stop(handle)
    disk = _disk(disk_backend, disk_root, handle)
    assert _mounted(disk.mountpoint)  # stop keeps the workspace
    subprocess.run(["umount", str(disk.mountpoint)], check=True)  # what a reboot does

    disk_backend.start(handle)

    assert _mounted(disk.mountpoint)
    r = run(disk_backend, handle, "cat note")
    assert r.out == "kept\n"
    assert _size_kib(disk_backend, handle) <= 16 * 1024
    assert len(_loop_devices(disk.image).splitlines()) == 1


def test_a_raised_limit_grows_a_stopped_workspace(
    any_disk_backend: DockerBackend, make_any_disk_sandbox: Callable[..., SandboxHandle]
) -> None:
    disk_backend, make_disk_sandbox = any_disk_backend, make_any_disk_sandbox
    handle = make_disk_sandbox()
    run(disk_backend, handle, "echo kept > note")
    before = _size_kib(disk_backend, handle)
    disk_backend.stop(handle)

    disk_backend.grow_workspace(handle.volume, 48)

    disk_backend.start(handle)
    assert _size_kib(disk_backend, handle) > 2 * before
    assert run(disk_backend, handle, "cat note").out == "kept\n"


def test_growing_a_workspace_in_use_is_refused_and_changes_nothing(
    disk_backend: DockerBackend, disk_root: Path,
    make_disk_sandbox: Callable[..., SandboxHandle]
) -> None:
    handle = make_disk_sandbox()
    run(disk_backend, handle, "echo kept > note")
    before = _size_kib(disk_backend, handle)

    with pytest.raises(SandboxError):
        disk_backend.grow_workspace(handle.volume, 48)

    disk = _disk(disk_backend, disk_root, handle)
    assert disk.is_mounted()
    assert len(_loop_devices(disk.image).splitlines()) == 1  # never two on one image
    assert _size_kib(disk_backend, handle) == before
    assert run(disk_backend, handle, "cat note && echo more > note2 && cat note2").out == (
        "kept\nmore\n")
    # Once stopped it grows.
    disk_backend.stop(handle)
    disk_backend.grow_workspace(handle.volume, 48)
    disk_backend.start(handle)
    assert _size_kib(disk_backend, handle) > 2 * before


def test_a_fork_copies_a_limited_workspace(
    any_disk_backend: DockerBackend, sandbox_image: str,
    make_any_disk_sandbox: Callable[..., SandboxHandle]
) -> None:
    disk_backend, make_disk_sandbox = any_disk_backend, make_any_disk_sandbox
    source, target = make_disk_sandbox(), make_disk_sandbox()
    run(disk_backend, source, "mkdir -p d && echo copied > d/file")
    disk_backend.stop(source)

    disk_backend.copy_workspace(source.volume, target.volume, image=sandbox_image,
                                limits=DISK_LIMITS)

    r = run(disk_backend, target, "cat d/file; df -k --output=size /workspace | tail -1")
    assert r.out.split()[0] == "copied"
    assert int(r.out.split()[1]) <= 16 * 1024


def test_reconcile_finds_a_disk_whose_volume_was_never_made(
    disk_backend: DockerBackend, disk_root: Path
) -> None:
    disk = WorkspaceDisk(disk_root, disk_backend.site, f"orphan-{uuid.uuid4().hex[:8]}")
    disk.ensure(16)  # a worker died before the volume was created
    assert disk.dir.name in disk_backend.list_volumes()

    disk_backend.remove_volume(disk.dir.name)

    assert not _mounted(disk.mountpoint)
    assert not _loop_devices(disk.image)
    assert not disk.dir.exists()


def test_required_limits_refuse_a_sandbox_the_host_cannot_limit(sandbox_image: str) -> None:
    backend = DockerBackend(site=f"test-{uuid.uuid4().hex[:8]}", workspace_disk="ext4",
                            workspace_dir="")
    with pytest.raises(SandboxError) as excinfo:
        backend.create(SandboxSpec(image=sandbox_image, limits=DISK_LIMITS))
    assert excinfo.value.permanent
    assert "workspace size limits are required" in excinfo.value.message
    assert backend.list_sandboxes() == []
    assert backend.list_volumes() == {}


def test_without_mount_support_auto_falls_back_to_a_plain_volume(
    sandbox_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = DockerBackend(site=f"test-{uuid.uuid4().hex[:8]}", workspace_disk="auto",
                            workspace_dir="")
    assert "workspace size limits are OFF" in caplog.text
    handle = backend.create(SandboxSpec(image=sandbox_image, limits=DISK_LIMITS))
    try:
        assert run(backend, handle, "echo ok").out == "ok\n"
    finally:
        backend.destroy(handle)


@pytest.mark.django_db
def test_the_project_limit_is_clamped_by_the_site_maximum_and_the_team_quota() -> None:
    from agentide.accounts.models import Team
    from agentide.projects.models import Project
    from agentide.quotas.services import quota_for
    from agentide.sessions.models import Session

    team = Team.objects.create(name=f"T {uuid.uuid4().hex[:6]}", slug=uuid.uuid4().hex[:10])

    def disk_mb(asked: int) -> int:
        project = Project(team=team, sandbox_disk_mb=asked)
        return services.limits_for(project, sandbox_admission(Session(project=project))).disk_mb

    with override_settings(AGENTIDE_SANDBOX_MAX_DISK_MB=64):
        assert disk_mb(5000) == 64
        assert disk_mb(32) == 32
        assert disk_mb(1) == 16

        # The team's quota is a ceiling too, below the site's or above it.
        quota = quota_for(team)
        quota.max_workspace_disk_mb = 48
        quota.full_clean()
        quota.save()
        assert disk_mb(5000) == 48
        assert disk_mb(32) == 32
        quota.max_workspace_disk_mb = 1000
        quota.save()
        assert disk_mb(5000) == 64
        quota.max_workspace_disk_mb = None  # blank = no team limit
        quota.save()
        assert disk_mb(5000) == 64
        # The warm pool's profile (a project of no team) knows no team quota.
        assert services.default_profile()[1].disk_mb == 64


@pytest.mark.django_db
def test_operators_set_the_teams_workspace_ceiling_in_the_quota_inline() -> None:
    from django.test import Client

    from agentide.accounts.models import Team, User
    from agentide.quotas.services import QUOTA_DEFAULT_FIELDS, quota_for

    team = Team.objects.create(name=f"T {uuid.uuid4().hex[:6]}", slug=uuid.uuid4().hex[:10])
    quota = quota_for(team)
    client = Client()
    client.force_login(User.objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}",
                                                     "root@example.test", "pw-root-12345"))
    page = client.get(f"/admin/accounts/team/{team.pk}/change/")
    assert b'name="quota-0-max_workspace_disk_mb"' in page.content
    assert b"Max workspace disk per session (MiB)" in page.content

    data: dict[str, str] = {
        "name": team.name, "slug": team.slug,
        "quota-TOTAL_FORMS": "1", "quota-INITIAL_FORMS": "1",
        "quota-MIN_NUM_FORMS": "0", "quota-MAX_NUM_FORMS": "1",
        "quota-0-id": str(quota.pk), "quota-0-team": str(team.pk),
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0", "memberships-MAX_NUM_FORMS": "1000",
        **{f"quota-0-{name}": "" for name in QUOTA_DEFAULT_FIELDS},
        "quota-0-suspended_reason": "",
    }
    # Too small to be a workspace: refused, nothing changes.
    refused = client.post(f"/admin/accounts/team/{team.pk}/change/",
                          {**data, "quota-0-max_workspace_disk_mb": "8"})
    assert refused.status_code == 200
    assert b"greater than or equal to 16" in refused.content
    quota.refresh_from_db()
    assert quota.max_workspace_disk_mb is None

    saved = client.post(f"/admin/accounts/team/{team.pk}/change/",
                        {**data, "quota-0-max_workspace_disk_mb": "2048"})
    assert saved.status_code == 302, saved.content[:2000]
    quota.refresh_from_db()
    assert quota.max_workspace_disk_mb == 2048


@pytest.mark.django_db
def test_a_session_sandbox_gets_its_projects_workspace_size(sandbox_image: str) -> None:
    from agentide.accounts.models import Team
    from agentide.projects.models import Project
    from agentide.sessions.models import Session

    site = f"test-{uuid.uuid4().hex[:8]}"
    with override_settings(AGENTIDE_SANDBOX_SITE=site, AGENTIDE_SANDBOX_IMAGE=sandbox_image,
                           AGENTIDE_SANDBOX_WARM_POOL_SIZE=0,
                           AGENTIDE_SANDBOX_WORKSPACE_DISK="ext4"):
        team = Team.objects.create(name=f"T {uuid.uuid4().hex[:6]}", slug=uuid.uuid4().hex[:10])
        project = Project.objects.create(team=team, name="P", slug="p", sandbox_memory_mb=256,
                                         sandbox_pids_limit=128, sandbox_tmp_mb=16,
                                         sandbox_disk_mb=24, command_timeout_s=30)
        session: Any = Session.objects.create(project=project, title="S")
        try:
            out: list[bytes] = []
            services.run_command(session, "df -k --output=size /workspace | tail -1",
                                 command_id=uuid.uuid4().hex,
                                 admission=sandbox_admission(session),
                                 on_output=lambda stream, data: out.append(data))
            assert int(b"".join(out).strip()) <= 24 * 1024

            # Raised while stopped: the next start grows it.
            services.stop_sandbox(session)
            Project.objects.filter(pk=project.pk).update(sandbox_disk_mb=64)
            session.refresh_from_db()
            out.clear()
            services.run_command(session, "df -k --output=size /workspace | tail -1",
                                 command_id=uuid.uuid4().hex,
                                 admission=sandbox_admission(session),
                                 on_output=lambda stream, data: out.append(data))
            assert int(b"".join(out).strip()) > 48 * 1024
        finally:
            services.purge_site_sandboxes()


@pytest.mark.django_db
def test_reconcile_removes_an_orphans_disk_without_leaking_mounts(sandbox_image: str) -> None:
    site = f"test-{uuid.uuid4().hex[:8]}"
    with override_settings(AGENTIDE_SANDBOX_SITE=site, AGENTIDE_SANDBOX_WARM_POOL_SIZE=0,
                           AGENTIDE_SANDBOX_WORKSPACE_DISK="ext4",
                           AGENTIDE_SANDBOX_ORPHAN_GRACE_S=0):
        backend = services.get_backend()
        try:
            # A container no row knows (its worker died before recording it).
            handle = backend.create(SandboxSpec(image=sandbox_image, limits=DISK_LIMITS,
                                                labels={"session": "0"}))
            assert isinstance(backend, DockerBackend)
            disk = WorkspaceDisk(services.conf.workspace_dir(), site, handle.volume)
            assert _mounted(disk.mountpoint)

            report = services.reconcile()

            assert handle.container_id in report.removed_containers
            assert not _mounted(disk.mountpoint)
            assert not _loop_devices(disk.image)
            assert not disk.dir.exists()
        finally:
            services.purge_site_sandboxes()


def test_a_workspace_started_unmounted_cannot_write_to_the_host_disk(
    disk_backend: DockerBackend, disk_root: Path,
    make_disk_sandbox: Callable[..., SandboxHandle]
) -> None:
    handle = make_disk_sandbox()
    disk_backend.stop(handle)
    disk = _disk(disk_backend, disk_root, handle)
    subprocess.run(["umount", str(disk.mountpoint)], check=True)  # a reboot
    # A process that cannot mount (limits off) starts it.
    plain = DockerBackend(site=disk_backend.site)
    plain.start(handle)

    try:
        r = run(plain, handle, "echo x > /workspace/leak")
        assert r.result.exit_code != 0
    except SandboxError as exc:
        assert "ermission denied" in exc.message
    assert not disk.is_mounted()
    assert not (disk.mountpoint / "leak").exists()
    disk_backend.stop(handle)


def _ask(path: str, raw: bytes) -> list[dict[str, Any]]:
    """Send raw bytes to the service and read its answers until it closes (a close with
    our bytes unread resets the connection after its answers)."""
    got: list[dict[str, Any]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        try:
            conn.sendall(raw)
            conn.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it stopped reading: what it said is still there to read
        with conn.makefile("rb") as answers:
            try:
                for line in answers:
                    got.append(json.loads(line))
            except ConnectionResetError:
                pass
    return got


@pytest.mark.parametrize("request_", [
    b"not json",
    b"[1, 2]",
    b"\xff\xfe",
    b"[" * 4000,
    b'{"op": "list", "site": "s", "n": 1' + b"0" * 4000 + b"}",
    b'{"op": "exec", "site": "s", "volume": "v"}',
    b'{"op": "ensure", "site": "s", "volume": "../x", "size_mb": 16}',
    b'{"op": "ensure", "site": "..", "volume": "v", "size_mb": 16}',
    b'{"op": "ensure", "site": "s", "volume": "a/b", "size_mb": 16}',
    b'{"op": "ensure", "site": "s", "volume": "", "size_mb": 16}',
    b'{"op": "ensure", "site": "s", "volume": 7, "size_mb": 16}',
    b'{"op": "ensure", "site": "s", "volume": "v", "size_mb": 99999999999999}',
    b'{"op": "ensure", "site": "s", "volume": "v", "size_mb": -16}',
    b'{"op": "ensure", "site": "s", "volume": "v", "size_mb": 15}',
    b'{"op": "ensure", "site": "s", "volume": "v", "size_mb": 16.5}',
    b'{"op": "ensure", "site": "s", "volume": "v", "size_mb": true}',
    b'{"op": "ensure", "site": "s", "volume": "v", "size_mb": "16"}',
    b'{"op": "grow", "site": "s", "volume": "v", "size_mb": null}',
    b'{"op": "ensure", "site": "s", "volume": "v", "size_mb": 16, "path": "/etc"}',
    b'{"op": "release", "site": "s"}',
], ids=lambda raw: raw.decode(errors="replace")[:60])
def test_the_disk_service_refuses_hostile_requests_and_keeps_serving(
    disk_socket: str, disk_root: Path, request_: bytes
) -> None:
    site = f"test-{uuid.uuid4().hex[:8]}"
    raw = request_.replace(b'"site": "s"', f'"site": "{site}"'.encode())
    before = sorted(p.name for p in disk_root.iterdir())

    (answer,) = _ask(disk_socket, raw + b"\n")

    assert answer["ok"] is False
    assert answer["permanent"] is True
    assert answer["error"]
    # Nothing was made anywhere, and the service still answers.
    assert sorted(p.name for p in disk_root.iterdir()) == before
    assert not (disk_root / site).exists()
    assert not (disk_root.parent / "x").exists()
    (listed,) = _ask(disk_socket, json.dumps({"op": "list", "site": site}).encode() + b"\n")
    assert listed == {"ok": True, "volumes": {}}


def test_the_disk_service_cuts_off_an_oversized_line(disk_socket: str) -> None:
    huge = b'{"op": "list", "site": "' + b"a" * 100_000 + b'"}\n'
    answers = _ask(disk_socket, huge + b'{"op": "list", "site": "s"}\n')
    # One refusal, then the connection is closed: the rest is never read.
    assert len(answers) == 1
    assert answers[0]["ok"] is False and "at most" in answers[0]["error"]
    (listed,) = _ask(disk_socket, b'{"op": "list", "site": "s"}\n')
    assert listed["ok"] is True


def test_the_disk_service_socket_is_its_owners_alone(disk_socket: str) -> None:
    assert Path(disk_socket).stat().st_mode & 0o777 == 0o600


def test_the_disk_service_command_needs_its_socket_setting() -> None:
    from django.core.management import CommandError, call_command

    with override_settings(AGENTIDE_SANDBOX_WORKSPACE_DISK_SOCKET=""), \
            pytest.raises(CommandError, match="AGENTIDE_SANDBOX_WORKSPACE_DISK_SOCKET"):
        call_command("serve_workspace_disks")


def test_a_worker_using_the_disk_service_reports_it_down_as_retryable(
    disk_root: Path, sandbox_image: str, tmp_path: Path
) -> None:
    backend = DockerBackend(site=f"test-{uuid.uuid4().hex[:8]}", workspace_disk="ext4",
                            workspace_dir="", workspace_disk_socket=str(tmp_path / "none.sock"))
    with pytest.raises(SandboxError) as refused:
        backend.create(SandboxSpec(image=sandbox_image, limits=DISK_LIMITS,
                                   labels={"test": "workspace-disk"}))
    assert "workspace disk service" in refused.value.message
    assert refused.value.permanent is False
    # Nothing is left behind: no container, no volume (and no unlimited fallback).
    engine = DockerBackend(site=backend.site)
    assert engine.list_sandboxes() == []
    assert engine.list_volumes() == {}
