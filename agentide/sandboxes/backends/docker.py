"""Sandboxes as hardened Docker containers (the docker SDK; the only module importing it).

Commands take the fast path when the image has the AgentIDE runner
(``/opt/agentide/runner.py`` + ``python3``): each worker process keeps one long-lived
``docker exec`` into the runner per sandbox (a small pool if several threads run commands at
once) and sends framed requests over it, so an ``echo`` costs a few milliseconds instead of
the ~50+ ms of a new exec (bench/sandbox_bench.py). Images without the runner get one
``docker exec`` per command (bash wrapper with coreutils ``timeout``); both share the shell
state files, so they agree on cwd and environment.

Every container is created hardened: no network, all capabilities dropped,
no-new-privileges, uid 1000, an init process, pids/memory (swap equal)/CPU limits,
nofile/fsize/core ulimits, a read-only root with the workspace on a named volume and /tmp
on a size-capped tmpfs, an empty environment, and labels (app, site, team, project,
session, created, volume) on container and volume. ``SandboxLimits.runtime`` (setting
``AGENTIDE_SANDBOX_RUNTIME``) picks another OCI runtime for stronger isolation, e.g.
``runsc`` for gVisor: install gVisor on the engine host, register it in
/etc/docker/daemon.json (``{"runtimes": {"runsc": {"path": "/usr/local/bin/runsc"}}}``),
restart dockerd and set ``AGENTIDE_SANDBOX_RUNTIME=runsc``.

A workspace with a size limit (``SandboxLimits.disk_mb``, and the backend built with
``workspace_disk`` "auto" or "ext4" on a host that can mount) is a loop-mounted ext4 image
(``workspace_disk.py``) that its volume bind-mounts; otherwise a plain named volume.

Files go through the archive API. Paths are checked lexically (no ``..``, not absolute) and
every component under /workspace is stat'ed through the engine (HEAD archive) so a symlink
anywhere in the path is refused; the engine resolves paths inside the container's root, so
host code never follows a path that came from the container.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import json
import logging
import os
import posixpath
import re
import socket
import struct
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import Ulimit

from agentide.sandboxes.backends import workspace_disk as disks
from agentide.sandboxes.backends.base import (
    MAX_LIST_BYTES,
    MAX_LIST_ENTRIES,
    WORKSPACE,
    DirListing,
    ExecResult,
    FileEntry,
    OutputCallback,
    SandboxBackend,
    SandboxError,
    SandboxHandle,
    SandboxListing,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxSpec,
    SandboxStats,
)
from agentide.sandboxes.runner.runner import SHELL_WRAPPER

logger = logging.getLogger(__name__)

LABEL_PREFIX = "org.agentide."
APP_LABEL = f"{LABEL_PREFIX}app"
APP_NAME = "agentide"
RUNNER_PATH = "/opt/agentide/runner.py"
SANDBOX_UID = "1000:1000"
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")

# Seconds a host waits past a command's own timeout before it declares the runner lost.
HOST_GRACE_S = 30.0
READ_SIZE = 256 * 1024
MAX_COMMAND_BYTES = 120 * 1024
# Idle runner connections kept per sandbox, and for how long (seconds).
MAX_IDLE_PER_SANDBOX = 2
IDLE_CONNECTION_S = 600.0

_FRAME = struct.Struct(">cIH")
_REQUEST = struct.Struct(">I")
_DOCKER_HEADER = struct.Struct(">BxxxL")

# Go os.FileMode type bits, as found in the archive API's stat header.
_MODE_DIR = 1 << 31
_MODE_SYMLINK = 1 << 27
_MODE_TYPE = _MODE_DIR | _MODE_SYMLINK | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)

# Bash run for one command when the image has no runner: coreutils timeout (which puts the
# command in a process group of its own and kills that group), then the runner's own wrapper
# in standalone mode (it loads and saves cwd/env itself). Children that leave the group are
# found by their AGENTIDE_COMMAND_ID marker (_STANDALONE_KILL).
_STANDALONE = r"""
mkdir -p /tmp/.agentide 2>/dev/null
exec timeout -s KILL "$3" bash --noprofile --norc -c "$4" agentide "$1" "$2" standalone
"""

# Kill a command from a second exec when the image has no runner (pure bash + coreutils).
_STANDALONE_KILL = r"""
id="$1"; run=/tmp/.agentide
: > "$run/$id.cancelled" 2>/dev/null
for round in 1 2 3 4 5 6 7 8 9 10; do
    found=
    read -r pg < "$run/$id.pgid" 2>/dev/null && kill -KILL -- "-$pg" 2>/dev/null && found=1
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" = "$$" ] && continue
        if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qx "AGENTIDE_COMMAND_ID=$id"; then
            kill -KILL "${p#/proc/}" 2>/dev/null && found=1
        fi
    done
    [ -n "$found" ] || break
done
"""


def _label(key: str) -> str:
    return f"{LABEL_PREFIX}{key}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_command_id(command_id: str) -> None:
    if not COMMAND_ID_RE.match(command_id):
        raise SandboxError(f"invalid command id {command_id!r}", permanent=True)


def _check_command(command: str) -> None:
    # The command reaches bash as one argv string: the kernel caps those at 128 KiB
    # (MAX_ARG_STRLEN) and they cannot hold NUL.
    if "\x00" in command:
        raise SandboxError("the command contains a NUL character", permanent=True)
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise SandboxError(
            f"the command is longer than {MAX_COMMAND_BYTES} bytes; write it to a file "
            "in the workspace and run that", permanent=True)


def _read_records(
    chunks: Iterator[bytes], max_entries: int, max_bytes: int
) -> tuple[list[bytes], bool]:
    """NUL-terminated records from a stream: at most ``max_entries``, reading at most
    ``max_bytes``; True when the stream held more. Stops reading (and closes the stream)
    at either cap, so a huge directory never reaches memory whole."""
    buf = bytearray()
    records: list[bytes] = []
    read = 0
    truncated = False
    try:
        for chunk in chunks:
            read += len(chunk)
            buf += chunk[: max(0, max_bytes - (read - len(chunk)))]
            *complete, rest = bytes(buf).split(b"\0")
            records.extend(complete)
            buf = bytearray(rest)
            if read > max_bytes or len(records) > max_entries:
                truncated = True
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if len(records) > max_entries:
        truncated = True
    return records[:max_entries], truncated


def workspace_path(path: str) -> str:
    """Map a path relative to /workspace to its absolute form, refusing traversal.

    Refuses absolute paths, ``..`` components, NUL and control characters. "" and "."
    mean /workspace itself.
    """
    if "\x00" in path or any(ord(c) < 0x20 for c in path):
        raise SandboxError("path contains control characters", permanent=True)
    if path.startswith("/"):
        raise SandboxError("absolute paths are refused; give a path relative to /workspace",
                           permanent=True)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise SandboxError("'..' is refused in paths", permanent=True)
    return posixpath.join(WORKSPACE, *parts) if parts else WORKSPACE


class _RunnerLost(Exception):
    """The exec socket to the runner broke or never produced a runner."""


class _NotStarted(_RunnerLost):
    """The connection broke before the runner started the command: safe to retry."""


class RunnerConnection:
    """One long-lived ``docker exec`` into ``runner.py serve``.

    Not thread-safe: the backend hands a connection to one command at a time.
    """

    def __init__(self, api: Any, container_id: str) -> None:
        self.container_id = container_id
        self.pid = os.getpid()
        exec_id = api.exec_create(
            container_id,
            ["python3", "-I", "-S", RUNNER_PATH, "serve"],
            stdin=True,
            stdout=True,
            stderr=True,
            tty=False,
            user=SANDBOX_UID,
            workdir=WORKSPACE,
        )["Id"]
        raw = api.exec_start(exec_id, socket=True)
        self._holder = raw  # keeps the HTTP response (and so the socket) alive
        self.sock: socket.socket = getattr(raw, "_sock", raw)
        self.sock.setblocking(True)
        self._raw = bytearray()  # docker-multiplexed bytes not yet split
        self._out = bytearray()  # runner stdout bytes not yet parsed into frames
        self._err = bytearray()  # runner stderr, kept for diagnostics
        self.broken = False
        self.last_used = time.monotonic()
        kind, _, payload = self.read_frame(time.monotonic() + 15)
        if kind != b"R" or not json.loads(payload).get("ready"):
            raise _RunnerLost(f"runner did not start: {bytes(self._err[-500:])!r}")

    def send(self, message: dict[str, object]) -> None:
        body = json.dumps(message).encode()
        try:
            self.sock.sendall(_REQUEST.pack(len(body)) + body)
        except OSError as exc:
            self.broken = True
            # The request never reached a runner (a partial frame is dropped with the socket):
            # nothing ran, so a caller may safely retry on a fresh connection.
            raise _NotStarted(str(exc)) from exc

    def read_frame(self, deadline: float) -> tuple[bytes, str, bytes]:
        """Next runner frame: (kind, command id, payload). Raises TimeoutError at deadline."""
        while True:
            frame = self._parse_frame()
            if frame is not None:
                return frame
            self._fill(deadline)

    def _parse_frame(self) -> tuple[bytes, str, bytes] | None:
        out = self._out
        if len(out) < _FRAME.size:
            return None
        kind, size, id_len = _FRAME.unpack_from(out)
        end = _FRAME.size + id_len + size
        if len(out) < end:
            return None
        ident = bytes(out[_FRAME.size : _FRAME.size + id_len]).decode()
        payload = bytes(out[_FRAME.size + id_len : end])
        del out[:end]
        return kind, ident, payload

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError:
            raise
        except OSError as exc:
            self.broken = True
            raise _RunnerLost(str(exc)) from exc
        if not data:
            self.broken = True
            raise _RunnerLost(f"runner exited: {bytes(self._err[-500:])!r}")
        raw = self._raw
        raw += data
        # Split Docker's stream multiplexing (8-byte header per block) into stdout/stderr.
        pos = 0
        n = len(raw)
        while n - pos >= _DOCKER_HEADER.size:
            stream, size = _DOCKER_HEADER.unpack_from(raw, pos)
            if n - pos - _DOCKER_HEADER.size < size:
                break
            start = pos + _DOCKER_HEADER.size
            if stream == 1:
                self._out += raw[start : start + size]
            else:
                self._err += raw[start : start + size]
                del self._err[:-4096]
            pos = start + size
        del raw[:pos]

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError):
            self.sock.close()
        # Closing a half-dead HTTP response may fail in many ways; none matter here.
        with contextlib.suppress(Exception):
            self._holder.close()


class DockerBackend(SandboxBackend):
    """``SandboxBackend`` on one Docker engine (``DOCKER_HOST`` or ``base_url``).

    ``site`` names this AgentIDE installation: every container and volume gets it as a
    label and listings only see their own site's, so two installations (or test runs)
    sharing an engine never reconcile each other's sandboxes away.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        site: str = "default",
        engine_timeout_s: int = 60,
        workspace_disk: str = "volume",
        workspace_dir: str = "",
        workspace_disk_socket: str = "",
    ) -> None:
        self.site = site
        # Size-limited workspaces (ext4 images under workspace_dir, made here or by the
        # workspace disk service at workspace_disk_socket) or plain volumes.
        self._disks, self._disk_refusal = disks.configure(
            workspace_disk, workspace_dir, base_url or os.environ.get("DOCKER_HOST", ""),
            workspace_disk_socket)
        self._base_url = base_url
        self._engine_timeout_s = engine_timeout_s
        self._client: docker.DockerClient | None = None
        self._client_pid = 0
        self._lock = threading.Lock()
        self._idle: dict[str, list[RunnerConnection]] = {}
        self._no_runner: set[str] = set()
        self._cancelled: set[str] = set()
        self._cpu_samples: dict[str, tuple[int, int]] = {}  # container -> (cpu ns, clock ns)

    # -- engine plumbing --------------------------------------------------------------

    def _disk(self, volume: str) -> disks.WorkspaceDisk | disks.RemoteWorkspaceDisk | None:
        """The size-limited disk of a workspace volume (None when disks are off)."""
        if self._disks is None or not volume:
            return None
        return self._disks.disk(self.site, volume)

    def _mount_workspace(self, volume: str) -> None:
        """Mount a kept size-limited workspace again (after a host reboot); idempotent."""
        disk = self._disk(volume)
        if disk is not None and disk.exists():
            disk.ensure()

    def _create_volume(self, name: str, labels: dict[str, str], disk_mb: int,
                       reuse: bool) -> None:
        if self._disk_refusal and disk_mb:
            raise SandboxError(self._disk_refusal, permanent=True)
        disk = self._disk(name) if disk_mb else None
        # A kept workspace made before limits were on stays a plain volume.
        if disk is not None and reuse and not disk.exists():
            disk = None
        if disk is None:
            self.client.volumes.create(name=name, labels=labels)
            return
        disk.ensure(disk_mb)
        # The local driver bind-mounts the loop-mounted image into every container using it.
        self.client.volumes.create(
            name=name, labels=labels, driver="local",
            driver_opts={"type": "none", "o": "bind", "device": str(disk.mountpoint)})

    def grow_workspace(self, volume: str, disk_mb: int) -> None:
        disk = self._disk(volume)
        if disk is not None and disk_mb:
            disk.grow(disk_mb)

    @property
    def client(self) -> docker.DockerClient:
        # A forked worker must not share its parent's HTTP connections or exec sockets.
        if self._client is None or self._client_pid != os.getpid():
            with self._lock:
                self._idle = {}
                self._client_pid = os.getpid()
                try:
                    if self._base_url:
                        self._client = docker.DockerClient(
                            base_url=self._base_url, timeout=self._engine_timeout_s
                        )
                    else:
                        self._client = docker.from_env(timeout=self._engine_timeout_s)
                except docker.errors.DockerException as exc:
                    raise SandboxError(
                        f"Docker engine unreachable: {exc}", permanent=False
                    ) from exc
        return self._client

    @property
    def api(self) -> Any:
        return self.client.api

    @staticmethod
    def _error(exc: Exception, what: str) -> SandboxError:
        if isinstance(exc, docker.errors.ImageNotFound):
            return SandboxError(f"{what}: image not found", permanent=True)
        if isinstance(exc, docker.errors.NotFound):
            return SandboxNotFound(f"{what}: not found")
        if isinstance(exc, docker.errors.APIError) and exc.status_code == 409:
            return SandboxNotRunning(f"{what}: {exc.explanation or exc}")
        if isinstance(exc, docker.errors.APIError) and exc.is_client_error():
            return SandboxError(f"{what}: {exc.explanation or exc}", permanent=True)
        return SandboxError(f"{what}: {exc}", permanent=False)

    # -- lifecycle --------------------------------------------------------------------

    def create(self, spec: SandboxSpec) -> SandboxHandle:
        limits = spec.limits
        name = spec.name or f"agentide-{uuid.uuid4().hex[:16]}"
        labels = {_label(k): str(v) for k, v in spec.labels.items()}
        labels[APP_LABEL] = APP_NAME
        labels[_label("site")] = self.site
        labels[_label("created")] = _now().isoformat(timespec="seconds")
        volume_name = spec.volume or f"{name}-workspace"
        labels[_label("volume")] = volume_name
        memory = f"{int(limits.memory_mb)}m"
        fsize = int(limits.fsize_mb) * 1024 * 1024
        try:
            self._create_volume(volume_name, labels, limits.disk_mb, reuse=bool(spec.volume))
            container = self.client.containers.create(
                spec.image,
                name=name,
                hostname="sandbox",
                user=SANDBOX_UID,
                working_dir=WORKSPACE,
                environment={},  # never the host's environment
                labels=labels,
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                init=True,
                pids_limit=int(limits.pids_limit),
                mem_limit=memory,
                memswap_limit=memory,  # no swap: memory + swap == memory
                nano_cpus=int(limits.cpus * 1e9),
                ulimits=[
                    Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile),
                    Ulimit(name="fsize", soft=fsize, hard=fsize),
                    Ulimit(name="core", soft=0, hard=0),
                ],
                read_only=True,
                volumes={volume_name: {"bind": WORKSPACE, "mode": "rw"}},
                # A tmpfs inside the container, not a host path.
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={int(limits.tmp_mb)}m,mode=1777"},  # noqa: S108
                runtime=limits.runtime or None,
                detach=True,
            )
            container.start()
        except (docker.errors.DockerException, SandboxError) as exc:
            # A volume handed in (a kept workspace) survives a failed create.
            self._remove_quietly(name, "" if spec.volume else volume_name)
            if isinstance(exc, SandboxError):
                raise
            raise self._error(exc, f"create sandbox from {spec.image}") from exc
        return SandboxHandle(container_id=container.id or "", volume=volume_name)

    def _remove_quietly(self, container: str, volume: str) -> None:
        with contextlib.suppress(docker.errors.DockerException):
            self.api.remove_container(container, force=True)
        if volume:
            with contextlib.suppress(SandboxError):
                self.remove_volume(volume)

    def start(self, handle: SandboxHandle) -> None:
        try:
            state = self.api.inspect_container(handle.container_id)["State"]
            if not state.get("Running"):
                self._forget(handle.container_id)
                self._mount_workspace(handle.volume)
                self.api.start(handle.container_id)
        except docker.errors.DockerException as exc:
            raise self._error(exc, "start sandbox") from exc

    def is_running(self, handle: SandboxHandle) -> bool:
        try:
            state = self.api.inspect_container(handle.container_id)["State"]
        except docker.errors.DockerException as exc:
            raise self._error(exc, "inspect sandbox") from exc
        return bool(state.get("Running")) and not state.get("Paused")

    def stop(self, handle: SandboxHandle) -> None:
        self._forget(handle.container_id)
        try:
            self.api.stop(handle.container_id, timeout=2)
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as exc:
            raise self._error(exc, "stop sandbox") from exc

    def destroy(self, handle: SandboxHandle) -> None:
        self._forget(handle.container_id)
        try:
            self.api.remove_container(handle.container_id, force=True, v=False)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise self._error(exc, "remove sandbox") from exc
        self.remove_volume(handle.volume)

    def remove_volume(self, name: str) -> None:
        if not name:
            return
        try:
            self.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise self._error(exc, "remove workspace volume") from exc
        disk = self._disk(name)
        if disk is not None:
            disk.release()

    def copy_workspace(self, source_volume: str, target_volume: str, *, image: str) -> None:
        helper = f"agentide-copy-{uuid.uuid4().hex[:12]}"
        self._mount_workspace(source_volume)
        self._mount_workspace(target_volume)
        try:
            container = self.client.containers.create(
                image,
                ["cp", "-a", "/from/.", "/to/"],
                name=helper,
                user=SANDBOX_UID,
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                read_only=True,
                volumes={
                    source_volume: {"bind": "/from", "mode": "ro"},
                    target_volume: {"bind": "/to", "mode": "rw"},
                },
            )
            try:
                container.start()
                status = container.wait(timeout=self._engine_timeout_s * 10)
                if status.get("StatusCode") != 0:
                    logs = container.logs(stderr=True, stdout=False)[-2000:]
                    raise SandboxError(
                        f"copying the workspace failed: {logs.decode(errors='replace')}",
                        permanent=True,
                    )
            finally:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
        except docker.errors.DockerException as exc:
            raise self._error(exc, "copy workspace") from exc

    def _forget(self, container_id: str) -> None:
        with self._lock:
            conns = self._idle.pop(container_id, [])
        for conn in conns:
            conn.close()

    # -- commands ---------------------------------------------------------------------

    def _checkout(self, container_id: str) -> RunnerConnection | None:
        """An idle runner connection (or a new one); None if the image has no runner."""
        if container_id in self._no_runner:
            return None
        self.client  # noqa: B018 - resets the pool after a fork
        with self._lock:
            idle = self._idle.get(container_id)
            while idle:
                conn = idle.pop()
                if not conn.broken and conn.pid == os.getpid():
                    return conn
        try:
            return RunnerConnection(self.api, container_id)
        except _RunnerLost as exc:
            if self._has_runner(container_id):
                raise SandboxError(
                    f"sandbox runner failed to start: {exc}", permanent=False
                ) from exc
            logger.info("sandbox %s has no runner; one exec per command", container_id[:12])
            self._no_runner.add(container_id)
            return None
        except docker.errors.DockerException as exc:
            raise self._error(exc, "open runner") from exc

    def _checkin(self, conn: RunnerConnection) -> None:
        """Return a connection for reuse. Each idle connection is a runner process using
        memory inside the sandbox, so only a few per sandbox are kept, and none for long."""
        if conn.broken:
            conn.close()
            return
        now = time.monotonic()
        conn.last_used = now
        stale: list[RunnerConnection] = []
        with self._lock:
            idle = self._idle.setdefault(conn.container_id, [])
            idle.append(conn)
            while len(idle) > MAX_IDLE_PER_SANDBOX:
                stale.append(idle.pop(0))
            for container_id, conns in list(self._idle.items()):
                keep = [c for c in conns if now - c.last_used < IDLE_CONNECTION_S]
                stale.extend(c for c in conns if c not in keep)
                if keep:
                    self._idle[container_id] = keep
                else:
                    del self._idle[container_id]
        for old in stale:
            old.close()

    def _has_runner(self, container_id: str) -> bool:
        try:
            result = self.api.exec_create(
                container_id, ["sh", "-c", f"command -v python3 && test -r {RUNNER_PATH}"],
                user=SANDBOX_UID,
            )
            self.api.exec_start(result["Id"])
            return self.api.exec_inspect(result["Id"]).get("ExitCode") == 0
        except docker.errors.DockerException:
            return True  # unsure: do not silently downgrade to the slow path

    def exec(
        self,
        handle: SandboxHandle,
        command: str,
        *,
        command_id: str,
        timeout_s: float,
        on_output: OutputCallback,
    ) -> ExecResult:
        _check_command_id(command_id)
        _check_command(command)
        for attempt in range(2):
            conn = self._checkout(handle.container_id)
            if conn is None:
                return self._exec_standalone(handle, command, command_id, timeout_s, on_output)
            try:
                conn.send({"op": "run", "id": command_id, "command": command,
                           "timeout": timeout_s})
                return self._follow(conn, handle, command_id, timeout_s, on_output)
            except _NotStarted:
                conn.close()
                if attempt == 0:
                    continue  # a cached connection went stale (e.g. sandbox restarted)
                raise SandboxError("sandbox runner connection lost", permanent=False) from None
        raise AssertionError("unreachable")

    def _follow(
        self,
        conn: RunnerConnection,
        handle: SandboxHandle,
        command_id: str,
        timeout_s: float,
        on_output: OutputCallback,
    ) -> ExecResult:
        started = time.monotonic()
        deadline = started + (timeout_s if timeout_s > 0 else 86400) + HOST_GRACE_S
        done = started_ = False
        try:
            while True:
                kind, ident, payload = conn.read_frame(deadline)
                if ident != command_id:
                    continue
                if kind == b"S":
                    started_ = True
                elif kind == b"O":
                    on_output("stdout", payload)
                elif kind == b"E":
                    on_output("stderr", payload)
                elif kind == b"X":
                    info = json.loads(payload)
                    outcome = info["outcome"]
                    self._cancelled.discard(command_id)
                    done = True
                    return ExecResult(outcome=outcome, exit_code=info.get("exit_code"),
                                      duration_s=float(info["duration"]))
                elif kind == b"R" and "error" in (msg := json.loads(payload)):
                    done = True
                    raise SandboxError(f"runner refused the command: {msg['error']}",
                                       permanent=True)
        except TimeoutError:
            self.cancel(handle, command_id)
            return ExecResult("timeout", None, time.monotonic() - started)
        except _RunnerLost as exc:
            if not started_:
                raise _NotStarted(str(exc)) from exc
            raise SandboxError(f"sandbox runner connection lost: {exc}", permanent=False) from exc
        finally:
            if done:
                self._checkin(conn)
            else:
                # Mid-command (caller's callback raised, or the socket broke): closing the
                # socket makes the runner kill what it was running.
                conn.close()

    def _exec_standalone(
        self,
        handle: SandboxHandle,
        command: str,
        command_id: str,
        timeout_s: float,
        on_output: OutputCallback,
    ) -> ExecResult:
        started = time.monotonic()
        limit = str(int(timeout_s) or 1) if timeout_s > 0 else "0"
        # The in-container timeout kills the command's group; children that escaped it keep
        # the output stream open, so the host kills them by marker shortly after.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            try:
                self._kill_standalone(handle, command_id)
            except SandboxError:
                logger.warning("could not kill timed-out command %s", command_id)

        timer = threading.Timer(timeout_s + 1, expire) if timeout_s > 0 else None
        try:
            exec_id = self.api.exec_create(
                handle.container_id,
                ["bash", "--noprofile", "--norc", "-c", _STANDALONE, "agentide",
                 command, command_id, limit, SHELL_WRAPPER],
                stdout=True, stderr=True, stdin=False, tty=False,
                user=SANDBOX_UID, workdir=WORKSPACE,
                environment={"AGENTIDE_COMMAND_ID": command_id},
            )["Id"]
            stream = self.api.exec_start(exec_id, stream=True, demux=True)
            if timer is not None:
                timer.start()
            for out, err in stream:
                if out:
                    on_output("stdout", out)
                if err:
                    on_output("stderr", err)
            exit_code = self.api.exec_inspect(exec_id).get("ExitCode")
        except docker.errors.DockerException as exc:
            raise self._error(exc, "exec") from exc
        finally:
            if timer is not None:
                timer.cancel()
        duration = time.monotonic() - started
        if command_id in self._cancelled:
            self._cancelled.discard(command_id)
            return ExecResult("cancelled", exit_code, duration)
        if expired.is_set() or (exit_code == 137 and timeout_s > 0 and duration >= timeout_s):
            if not expired.is_set():
                self._kill_standalone(handle, command_id)  # children that left the group
            return ExecResult("timeout", exit_code, duration)
        return ExecResult("exit", exit_code, duration)

    def cancel(self, handle: SandboxHandle, command_id: str) -> bool:
        _check_command_id(command_id)
        self._cancelled.add(command_id)
        if handle.container_id in self._no_runner:
            return self._kill_standalone(handle, command_id)
        # An idle connection of this process answers without a new exec (which matters when
        # a fork bomb has used up the pids limit).
        with self._lock:
            idle = self._idle.get(handle.container_id) or []
            conn = idle.pop() if idle else None
        if conn is not None:
            try:
                conn.send({"op": "kill", "id": command_id})
                deadline = time.monotonic() + 10
                while True:
                    kind, ident, payload = conn.read_frame(deadline)
                    if kind == b"R" and ident == command_id:
                        self._checkin(conn)
                        return bool(json.loads(payload).get("killed"))
            except (_RunnerLost, TimeoutError):
                conn.close()
        try:
            exec_id = self.api.exec_create(
                handle.container_id, ["python3", "-I", "-S", RUNNER_PATH, "kill", command_id],
                user=SANDBOX_UID,
            )["Id"]
            output = self.api.exec_start(exec_id)
        except docker.errors.DockerException as exc:
            raise self._error(exc, "cancel") from exc
        try:
            return bool(json.loads(output).get("killed"))
        except ValueError:
            return self._kill_standalone(handle, command_id)

    def _kill_standalone(self, handle: SandboxHandle, command_id: str) -> bool:
        try:
            exec_id = self.api.exec_create(
                handle.container_id,
                ["bash", "--noprofile", "--norc", "-c", _STANDALONE_KILL, "agentide", command_id],
                user=SANDBOX_UID,
            )["Id"]
            self.api.exec_start(exec_id)
        except docker.errors.DockerException as exc:
            raise self._error(exc, "cancel") from exc
        return True

    # -- observation ------------------------------------------------------------------

    def stats(self, handle: SandboxHandle) -> SandboxStats:
        """From the runner when there is one (a millisecond), else from the engine (the
        engine's stats call waits about a second for two samples).

        Through the runner the numbers come from inside the sandbox, so they are for
        display only; CPU is averaged since this process's previous sample (or over a
        short interval for the first one).
        """
        if handle.container_id not in self._no_runner:
            try:
                return self._runner_stats(handle)
            except (_RunnerLost, TimeoutError, ValueError, KeyError):
                pass
        return self._engine_stats(handle)

    def _runner_request(self, handle: SandboxHandle, op: str) -> dict[str, Any]:
        conn = self._checkout(handle.container_id)
        if conn is None:
            raise _RunnerLost("no runner")
        request_id = f"{op}-{uuid.uuid4().hex[:12]}"
        try:
            conn.send({"op": op, "id": request_id})
            deadline = time.monotonic() + 5
            while True:
                kind, ident, payload = conn.read_frame(deadline)
                if kind == b"R" and ident == request_id:
                    reply: dict[str, Any] = json.loads(payload)
                    break
        except BaseException:
            conn.close()
            raise
        self._checkin(conn)
        return reply

    def _runner_stats(self, handle: SandboxHandle) -> SandboxStats:
        sample = self._runner_request(handle, "stats")
        previous = self._cpu_samples.get(handle.container_id)
        if previous is None or sample["clock_ns"] - previous[1] > 60e9:
            time.sleep(0.1)  # a first sample needs a second one to give a rate
            previous = (sample["cpu_ns"], sample["clock_ns"])
            sample = self._runner_request(handle, "stats")
        elapsed = sample["clock_ns"] - previous[1]
        cpu = (sample["cpu_ns"] - previous[0]) / elapsed * 100.0 if elapsed > 0 else 0.0
        self._cpu_samples[handle.container_id] = (sample["cpu_ns"], sample["clock_ns"])
        return SandboxStats(
            cpu_percent=round(max(cpu, 0.0), 2),
            memory_bytes=int(sample["memory"]),
            memory_limit_bytes=int(sample["memory_limit"]),
            pids=int(sample["pids"]),
        )

    def _engine_stats(self, handle: SandboxHandle) -> SandboxStats:
        try:
            raw = self.api.stats(handle.container_id, stream=False)
        except docker.errors.DockerException as exc:
            raise self._error(exc, "stats") from exc
        cpu = raw.get("cpu_stats") or {}
        pre = raw.get("precpu_stats") or {}
        cpu_delta = (cpu.get("cpu_usage", {}).get("total_usage", 0)
                     - pre.get("cpu_usage", {}).get("total_usage", 0))
        system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        online = cpu.get("online_cpus") or 1
        percent = (cpu_delta / system_delta) * online * 100.0 if system_delta > 0 else 0.0
        mem = raw.get("memory_stats") or {}
        detail = mem.get("stats") or {}
        # Page cache is reclaimable; report what "docker stats" reports.
        usage = int(mem.get("usage", 0)) - int(detail.get("total_inactive_file",
                                                           detail.get("inactive_file", 0)))
        return SandboxStats(
            cpu_percent=round(max(percent, 0.0), 2),
            memory_bytes=max(usage, 0),
            memory_limit_bytes=int(mem.get("limit", 0)),
            pids=int((raw.get("pids_stats") or {}).get("current", 0)),
        )

    def list_sandboxes(self) -> list[SandboxListing]:
        try:
            rows = self.api.containers(all=True, filters={"label": self._site_filter()})
        except docker.errors.DockerException as exc:
            raise self._error(exc, "list sandboxes") from exc
        listings = []
        for row in rows:
            labels = {
                k[len(LABEL_PREFIX):]: v for k, v in (row.get("Labels") or {}).items()
                if k.startswith(LABEL_PREFIX)
            }
            listings.append(SandboxListing(
                container_id=row["Id"],
                name=(row.get("Names") or ["/"])[0].lstrip("/"),
                labels=labels,
                running=row.get("State") == "running",
                created=dt.datetime.fromtimestamp(int(row.get("Created", 0)), dt.UTC),
                volume=labels.get("volume", ""),
            ))
        return listings

    def _site_filter(self) -> list[str]:
        return [f"{APP_LABEL}={APP_NAME}", f"{_label('site')}={self.site}"]

    def list_volumes(self) -> dict[str, dict[str, str]]:
        try:
            result = self.api.volumes(filters={"label": self._site_filter()})
        except docker.errors.DockerException as exc:
            raise self._error(exc, "list volumes") from exc
        volumes = {
            v["Name"]: {k[len(LABEL_PREFIX):]: val for k, val in (v.get("Labels") or {}).items()
                        if k.startswith(LABEL_PREFIX)}
            for v in (result.get("Volumes") or [])
        }
        # A workspace disk whose volume was never made (a worker died in between) is listed
        # too, so reconcile removes it like any unused volume.
        if self._disks is not None:
            for name, mtime in self._disks.volumes(self.site).items():
                created = dt.datetime.fromtimestamp(mtime, dt.UTC).isoformat(timespec="seconds")
                volumes.setdefault(name, {"created": created})
        return volumes

    # -- files ------------------------------------------------------------------------

    def _stat(self, container_id: str, path: str) -> dict[str, Any] | None:
        """The engine's stat of a path in the container (not following a final symlink)."""
        try:
            res = self.api.head(
                self.api._url("/containers/{0}/archive", container_id), params={"path": path}
            )
        except requests.exceptions.RequestException as exc:
            raise SandboxError(f"stat {path}: {exc}", permanent=False) from exc
        if res.status_code == 404:
            if "container" in (res.headers.get("Content-Type", "") + res.reason).lower():
                raise SandboxNotFound("sandbox not found")
            return None
        if res.status_code >= 400:
            raise SandboxError(f"stat {path}: HTTP {res.status_code}",
                               permanent=res.status_code < 500)
        header = res.headers.get("X-Docker-Container-Path-Stat")
        if not header:
            raise SandboxError(f"stat {path}: no stat from engine", permanent=False)
        stat: dict[str, Any] = json.loads(base64.b64decode(header))
        return stat

    def _walk_checked(self, container_id: str, abs_path: str) -> dict[str, Any] | None:
        """Stat every component below /workspace; refuse symlinks. Returns the final stat."""
        rel = abs_path[len(WORKSPACE):].strip("/")
        current = WORKSPACE
        stat = self._stat(container_id, current)
        parts = rel.split("/") if rel else []
        for i, part in enumerate(parts):
            if stat is None or not stat["mode"] & _MODE_DIR:
                raise SandboxError(f"{posixpath.dirname(abs_path)} is not a directory",
                                   permanent=True)
            current = posixpath.join(current, part)
            stat = self._stat(container_id, current)
            if stat is not None and stat["mode"] & _MODE_SYMLINK:
                where = "path" if i == len(parts) - 1 else "path component"
                raise SandboxError(f"{where} {current} is a symlink; refused", permanent=True)
        return stat

    def list_dir(
        self,
        handle: SandboxHandle,
        path: str = "",
        *,
        max_entries: int = MAX_LIST_ENTRIES,
        max_bytes: int = MAX_LIST_BYTES,
    ) -> DirListing:
        abs_path = workspace_path(path)
        stat = self._walk_checked(handle.container_id, abs_path)
        if stat is None or not stat["mode"] & _MODE_DIR:
            raise SandboxError(f"{abs_path} is not a directory", permanent=True)
        # find runs as the sandbox user and does not follow symlinks (-P); a tar of the
        # directory would stream every file's content just to list names. head stops it
        # (SIGPIPE) past the byte cap; the host reads the stream only up to both caps.
        try:
            exec_id = self.api.exec_create(
                handle.container_id,
                ["sh", "-c", 'find -P "$1" -mindepth 1 -maxdepth 1 -printf "%y\\t%s\\t%T@\\t%f\\0"'
                 ' | head -c "$2"', "list", abs_path, str(max_bytes + 1)],
                user=SANDBOX_UID, stdout=True, stderr=False,
            )["Id"]
            stream = self.api.exec_start(exec_id, stream=True)
            records, truncated = _read_records(stream, max_entries, max_bytes)
        except docker.errors.DockerException as exc:
            raise self._error(exc, "list directory") from exc
        kinds = {"f": "file", "d": "dir", "l": "symlink"}
        entries = []
        for record in records:
            fields = record.decode(errors="replace").split("\t", 3)
            if len(fields) != 4:
                continue
            kind, size, mtime, name = fields
            try:
                when = dt.datetime.fromtimestamp(float(mtime), dt.UTC)
                entries.append(FileEntry(
                    path=posixpath.join(abs_path, name)[len(WORKSPACE) + 1:],
                    name=name,
                    kind=kinds.get(kind, "other"),  # type: ignore[arg-type]
                    size=int(size),
                    mtime=when,
                ))
            except ValueError:
                continue
        entries.sort(key=lambda e: (e.kind != "dir", e.name))
        return DirListing(entries, truncated)

    def read_file(self, handle: SandboxHandle, path: str, *, max_bytes: int) -> bytes:
        abs_path = workspace_path(path)
        if abs_path == WORKSPACE:
            raise SandboxError("/workspace is a directory", permanent=True)
        stat = self._walk_checked(handle.container_id, abs_path)
        if stat is None:
            raise SandboxError(f"{abs_path} does not exist", permanent=True)
        if stat["mode"] & _MODE_TYPE:
            raise SandboxError(f"{abs_path} is not a regular file", permanent=True)
        if stat["size"] > max_bytes:
            raise SandboxError(f"{abs_path} is {stat['size']} bytes; the limit is {max_bytes}",
                               permanent=True)
        try:
            chunks, _ = self.api.get_archive(handle.container_id, abs_path)
            data = self._first_member(chunks, max_bytes)
        except docker.errors.DockerException as exc:
            raise self._error(exc, "read file") from exc
        return data

    @staticmethod
    def _first_member(chunks: Iterator[bytes], max_bytes: int) -> bytes:
        # The archive holds one regular file; read at most the tar header + max_bytes so a
        # file that grew since the stat cannot flood memory.
        buf = bytearray()
        budget = max_bytes + 64 * 1024
        for chunk in chunks:
            buf += chunk
            if len(buf) > budget:
                raise SandboxError(f"file is larger than {max_bytes} bytes", permanent=True)
        with tarfile.open(fileobj=io.BytesIO(bytes(buf)), mode="r:") as tar:
            member = tar.next()
            if member is None or not member.isreg():
                raise SandboxError("not a regular file", permanent=True)
            if member.size > max_bytes:
                raise SandboxError(f"file is larger than {max_bytes} bytes", permanent=True)
            f = tar.extractfile(member)
            assert f is not None
            return f.read()

    def write_file(
        self, handle: SandboxHandle, path: str, data: bytes, *, max_bytes: int
    ) -> None:
        if len(data) > max_bytes:
            raise SandboxError(f"upload is {len(data)} bytes; the limit is {max_bytes}",
                               permanent=True)
        abs_path = workspace_path(path)
        if abs_path == WORKSPACE:
            raise SandboxError("cannot write /workspace itself", permanent=True)
        stat = self._walk_checked(handle.container_id, abs_path)
        if stat is not None and stat["mode"] & _MODE_TYPE:
            raise SandboxError(f"{abs_path} exists and is not a regular file", permanent=True)
        parent, name = posixpath.split(abs_path)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.uid = info.gid = 1000  # owned by the sandbox user, never root
            info.uname = info.gname = "agent"
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        try:
            self.api.put_archive(handle.container_id, parent, buf.getvalue())
        except docker.errors.DockerException as exc:
            raise self._error(exc, "write file") from exc
