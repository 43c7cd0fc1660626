"""Size-limited workspaces: one sparse ext4 image per workspace, loop-mounted on the host.

A sandbox's workspace is a Docker volume of the ``local`` driver that bind-mounts
``<root>/<site>/<volume>/mnt``; this module puts a filesystem of the workspace's size there
(``truncate`` a sparse ``disk.img``, ``mkfs.ext4``, ``mount -o loop,nodev,nosuid``). The
kernel then answers ENOSPC inside the sandbox when the workspace is full, and no other
workspace (nor the host disk) is affected. Chosen because it needs nothing but root and
loop devices on the engine host; XFS project quotas and overlay2's ``size`` option need an
XFS host filesystem mounted with ``pquota``.

Everything here runs on the engine host, as root, and is idempotent: ``ensure`` after a host
reboot mounts the kept image again, ``grow`` only grows, ``release`` tolerates what is
already gone. A file lock per workspace serialises workers of the same host (a second
``mount -o loop`` of the same image would stack a second loop device).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from agentide.sandboxes.backends.base import SandboxError

logger = logging.getLogger(__name__)

SANDBOX_OWNER = "1000:1000"
MIN_SIZE_MB = 16
# How long a grow waits for a just-stopped container's loop device to be released.
RELEASE_WAIT_S = 5.0
# Names of sites and workspace volumes: one path component, never "." or "..".
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_TOOLS = ("truncate", "mkfs.ext4", "mount", "umount", "e2fsck", "resize2fs", "losetup")


def host_support() -> str:
    """"" when this host can make limited workspaces, else why not (for a warning)."""
    if os.geteuid() != 0:
        return "the worker is not root (mounting loop devices needs root)"
    missing = [tool for tool in _TOOLS if _which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control is missing)"
    return ""


def configure(
    mode: str, root: str, engine: str, socket_path: str = ""
) -> tuple[LocalDisks | RemoteDisks | None, str]:
    """For a backend in workspace disk ``mode`` ("auto", "ext4" or "volume") with images
    under ``root``, talking to the engine at ``engine`` ("" = the local socket): (where its
    workspace disks are made, None when workspaces are plain volumes; why sandboxes must be
    refused, or ""). With ``socket_path`` the disks are made by the workspace disk service
    listening there (``serve_workspace_disks``: compose, where the worker cannot mount).
    Logs a warning when "auto" falls back to plain volumes."""
    if mode not in ("auto", "ext4", "volume"):
        raise SandboxError(f"unknown workspace disk mode {mode!r}", permanent=True)
    if mode == "volume":
        return None, ""
    if socket_path:
        return RemoteDisks(socket_path), ""
    reason = host_support()
    if engine and not engine.startswith("unix://"):
        reason = f"the Docker engine is not on this host ({engine})"
    elif not root:
        reason = "no workspace directory is set"
    if not reason:
        return LocalDisks(root), ""
    if mode == "ext4":
        logger.error("workspace size limits are required but unavailable: %s", reason)
        return None, f"workspace size limits are required but unavailable: {reason}"
    logger.warning(
        "workspace size limits are OFF: %s. Workspaces are plain Docker volumes that can "
        "fill the engine host's disk; set AGENTIDE_SANDBOX_WORKSPACE_DISK=ext4 to refuse "
        "sandboxes instead, or run the workspace disk service "
        "(AGENTIDE_SANDBOX_WORKSPACE_DISK_SOCKET).", reason)
    return None, ""


def _which(tool: str) -> str | None:
    # Daemons often run with a PATH that lacks the sbin directories these tools live in.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(tool, path=path)


def _run(*argv: str, ok: tuple[int, ...] = (0,)) -> None:
    try:
        done = subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], check=False,
                              capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"workspace disk: {argv[0]}: {exc}", permanent=False) from exc
    if done.returncode not in ok:
        detail = (done.stderr or done.stdout or b"").decode(errors="replace").strip()[-500:]
        raise SandboxError(f"workspace disk: {' '.join(argv[:2])} failed: {detail}",
                           permanent=False)


class WorkspaceDisk:
    """The image and mount point of one workspace volume under ``root``."""

    def __init__(self, root: str | Path, site: str, volume: str) -> None:
        if not NAME_RE.match(site) or not NAME_RE.match(volume):
            raise SandboxError(f"invalid workspace name {site!r}/{volume!r}", permanent=True)
        self.dir = Path(root) / site / volume
        self.image = self.dir / "disk.img"
        self.mountpoint = self.dir / "mnt"
        # The size the filesystem was made or last grown to (written after success, so a
        # grow that failed half-way is tried again).
        self.size_file = self.dir / "size_mb"

    def exists(self) -> bool:
        return self.image.exists()

    def is_mounted(self) -> bool:
        return self.mountpoint.is_dir() and os.path.ismount(self.mountpoint)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def ensure(self, size_mb: int | None = None) -> None:
        """Make (when ``size_mb`` is given and there is no image yet), mount and, when
        ``size_mb`` exceeds the current size, grow the workspace (which needs it out of
        use: SandboxError while a container still has it). Without ``size_mb`` an existing
        image is only mounted; a missing one raises SandboxError (permanent)."""
        with self._locked():
            fresh = not self.image.exists()
            if fresh:
                if size_mb is None:
                    raise SandboxError("the workspace disk image is gone", permanent=True)
                self._make(size_mb)
            if not self.is_mounted():
                self._mount()
            if fresh:
                # Not the user's: e2fsck makes it again when it needs one.
                with contextlib.suppress(OSError):
                    (self.mountpoint / "lost+found").rmdir()
            if size_mb is not None and max(MIN_SIZE_MB, size_mb) > self.size_mb():
                self._grow(size_mb)

    def grow(self, size_mb: int) -> None:
        """Grow an existing workspace to ``size_mb`` (mounting it); nothing when it is gone."""
        if self.exists():
            self.ensure(size_mb)

    def size_mb(self) -> int:
        """The filesystem's size in MiB, as last made or grown."""
        try:
            return int(self.size_file.read_text())
        except (OSError, ValueError):
            return self.image.stat().st_size >> 20

    def _make(self, size_mb: int) -> None:
        partial = self.image.with_suffix(".new")
        _run("truncate", "-s", str(self._bytes(size_mb)), str(partial))
        _run("mkfs.ext4", "-q", "-F", "-E", f"root_owner={SANDBOX_OWNER}", "-m", "0",
             str(partial))
        partial.rename(self.image)  # a half-made image never looks like a workspace
        self.size_file.write_text(str(max(MIN_SIZE_MB, size_mb)))

    def _grow(self, size_mb: int) -> None:
        # Offline: this host's kernel refuses ext4's online resize (EPERM, measured on
        # 6.18), so the workspace must be out of use (its sandbox stopped).
        self._unmount()
        if self._loop_devices_after(RELEASE_WAIT_S):
            # Unmounting here does not end a container's bind of the filesystem: it lives on
            # in its loop device until that container stops.
            self._mount()
            raise SandboxError("the workspace is in use; it grows when its sandbox is stopped",
                               permanent=False)
        _run("truncate", "-s", str(self._bytes(size_mb)), str(self.image))
        _run("e2fsck", "-f", "-p", str(self.image), ok=(0, 1))
        _run("resize2fs", str(self.image))
        self.size_file.write_text(str(max(MIN_SIZE_MB, size_mb)))
        self._mount()

    def _mount(self) -> None:
        # The bare mount point is root's (0755): a container started while the image is
        # not mounted (by a process that cannot mount) gets EACCES in /workspace instead of
        # writing to the host's disk without a limit.
        self.mountpoint.mkdir(mode=0o755, exist_ok=True)
        # A loop device still holding the image (a container's bind outlived our mount) is
        # mounted again as it is: a second loop device on the same file would have two
        # filesystems writing one image.
        devices = self._loop_devices()
        source = devices[0] if devices else str(self.image)
        options = "nodev,nosuid" if devices else "loop,nodev,nosuid"
        _run("mount", "-o", options, source, str(self.mountpoint))

    def _unmount(self) -> None:
        while self.is_mounted():
            _run("umount", str(self.mountpoint))

    def _loop_devices_after(self, wait_s: float) -> list[str]:
        """The image's loop devices once they are gone or ``wait_s`` has passed: a stopped
        container's mount namespace, and with it the loop device's last user, is torn down
        by the kernel after the engine reports the container stopped."""
        deadline = time.monotonic() + wait_s
        while (devices := self._loop_devices()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return devices

    def _loop_devices(self) -> list[str]:
        argv = [_which("losetup") or "losetup", "-n", "-O", "NAME", "-j", str(self.image)]
        found = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        return found.stdout.split()

    @staticmethod
    def _bytes(size_mb: int) -> int:
        return max(MIN_SIZE_MB, int(size_mb)) * 1024 * 1024

    def release(self) -> None:
        """Unmount (the loop device goes with it) and delete the image. No-op when gone.
        Raises SandboxError when the mount is still busy (a container still uses it)."""
        if not self.dir.exists():
            return
        with self._locked():
            self._unmount()
            # mount -o loop sets autoclear, so umount freed the device; a device left from a
            # failed mount is detached here so nothing leaks.
            for device in self._loop_devices():
                _run("losetup", "-d", device)
        shutil.rmtree(self.dir)


def workspace_dirs(root: str | Path, site: str) -> dict[str, float]:
    """Workspace directories of ``site`` under ``root``: volume name -> mtime (epoch s)."""
    base = Path(root) / site
    if not base.is_dir():
        return {}
    return {entry.name: entry.stat().st_mtime for entry in base.iterdir() if entry.is_dir()}


class LocalDisks:
    """Workspace disks made by this process (root on the engine's host)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def disk(self, site: str, volume: str) -> WorkspaceDisk:
        return WorkspaceDisk(self.root, site, volume)

    def volumes(self, site: str) -> dict[str, float]:
        return workspace_dirs(self.root, site)


# The workspace disk service's protocol: one JSON object per line each way; a request is at
# most MAX_LINE_BYTES, an answer (a list of a site's workspaces) at most MAX_ANSWER_BYTES.
MAX_LINE_BYTES = 4096
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# A service call waits this long for an answer (mkfs or resize2fs of a large image).
SERVICE_TIMEOUT_S = 300.0


class RemoteDisks:
    """Workspace disks made by the workspace disk service at ``socket_path`` (a privileged
    process on the engine's host; ``workspace_disk_server``)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def disk(self, site: str, volume: str) -> RemoteWorkspaceDisk:
        if not NAME_RE.match(site) or not NAME_RE.match(volume):
            raise SandboxError(f"invalid workspace name {site!r}/{volume!r}", permanent=True)
        return RemoteWorkspaceDisk(self, site, volume)

    def volumes(self, site: str) -> dict[str, float]:
        listed = self.call({"op": "list", "site": site}).get("volumes")
        if not isinstance(listed, dict):
            raise SandboxError("workspace disk service: a malformed list", permanent=False)
        return {str(name): float(mtime) for name, mtime in listed.items()}

    def call(self, request: dict[str, object]) -> dict[str, object]:
        """One request, one answer; SandboxError when the service refuses or is unreachable."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(SERVICE_TIMEOUT_S)
                conn.connect(self.socket_path)
                conn.sendall(json.dumps(request).encode() + b"\n")
                with conn.makefile("rb") as answers:
                    line = answers.readline(MAX_ANSWER_BYTES)
        except OSError as exc:
            raise SandboxError(f"workspace disk service at {self.socket_path}: {exc}",
                               permanent=False) from exc
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise SandboxError("workspace disk service: no answer", permanent=False)
        if not answer.get("ok"):
            raise SandboxError(f"workspace disk service: {answer.get('error')}",
                               permanent=bool(answer.get("permanent")))
        return answer


class RemoteWorkspaceDisk:
    """``WorkspaceDisk``'s operations, done by the workspace disk service."""

    def __init__(self, service: RemoteDisks, site: str, volume: str) -> None:
        self._service = service
        self._name = {"site": site, "volume": volume}
        self._mountpoint: Path | None = None

    @property
    def mountpoint(self) -> Path:
        """Where the disk is mounted on the engine's host (known after ``ensure``)."""
        if self._mountpoint is None:
            raise SandboxError("workspace disk: not ensured yet", permanent=True)
        return self._mountpoint

    def exists(self) -> bool:
        return bool(self._service.call({"op": "status", **self._name}).get("exists"))

    def ensure(self, size_mb: int | None = None) -> None:
        answer = self._service.call({"op": "ensure", **self._name, "size_mb": size_mb})
        self._mountpoint = Path(str(answer["mountpoint"]))

    def grow(self, size_mb: int) -> None:
        self._service.call({"op": "grow", **self._name, "size_mb": size_mb})

    def release(self) -> None:
        self._service.call({"op": "release", **self._name})
