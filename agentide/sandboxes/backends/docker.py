"""Sandboxes as hardened Docker containers (the docker SDK; the only module importing it).

Commands take the fast path when the image has the AgentIDE runner
(``/opt/agentide/runner.py`` + ``python3``): each worker process keeps one long-lived
``docker exec`` into the runner per sandbox (a small pool if several threads run commands at
once) and sends framed requests over it, so an ``echo`` costs a few milliseconds instead of
the ~50+ ms of a new exec (bench/sandbox_bench.py). Images without the runner get one
``docker exec`` per command (bash wrapper with coreutils ``timeout``); both share the shell
state files, so they agree on cwd and environment. A terminal is a PTY of the runner, or
where no runner is used (gVisor, such images) a TTY ``docker exec`` of its own.

The runner runs beside the commands (same uid), out of their reach (non-dumpable, see
runner.py "Trust"); still, nothing it sends is believed beyond the protocol: ``FrameReader``
caps each frame kind's length, checks ids and payload schemas, and a violation drops the
connection and fails the command. A cancel reaches a runner with an HMAC token made from a
per-container key kept in a label (``_cancel_token``), which no command can read or forge.

Every container is created hardened: no network, all capabilities dropped,
no-new-privileges, uid 1000, an init process, pids/memory (swap equal)/CPU limits,
nofile/fsize/core ulimits, a read-only root with the workspace on a named volume and /tmp
on a size-capped tmpfs, an empty environment, and labels (app, site, team, project,
session, created, volume) on container and volume. ``SandboxLimits.runtime`` (setting
``AGENTIDE_SANDBOX_RUNTIME``) picks another OCI runtime for stronger isolation, e.g.
``runsc`` for gVisor: ``scripts/lib.sh``'s ``ensure_runsc`` installs Debian's package and
registers it in /etc/docker/daemon.json (``"runtimeArgs": ["--network=none"]``) with a
SIGHUP reload. Under gVisor the sandbox's kernel lives inside the container's cgroups: its
threads count against the pids limit (so the process limit becomes RLIMIT_NPROC and the
cgroup gets room) and an out-of-memory command takes the whole sandbox down (reported as
that command's OOM; the next command starts the sandbox again).

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
import hashlib
import hmac
import importlib.resources
import io
import json
import logging
import os
import posixpath
import re
import secrets
import select
import shlex
import socket
import struct
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import docker
import docker.errors
import requests.exceptions
from docker.types import Ulimit

from agentide.sandboxes.backends import workspace_disk as disks
from agentide.sandboxes.backends.base import (
    MAX_LIST_BYTES,
    MAX_LIST_ENTRIES,
    MAX_PTY_COLS,
    MAX_PTY_INPUT,
    MAX_PTY_ROWS,
    WORKSPACE,
    DirListing,
    ExecResult,
    FileEntry,
    FileStream,
    FileTooLarge,
    IgnorePattern,
    LeftoverProcess,
    OutputCallback,
    Pty,
    PtyOutput,
    SandboxBackend,
    SandboxError,
    SandboxHandle,
    SandboxLimits,
    SandboxListing,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxSpec,
    SandboxStats,
    ScannedEntry,
    WorkspaceScan,
    read_archive_files,
)

logger = logging.getLogger(__name__)

LABEL_PREFIX = "org.agentide."
APP_LABEL = f"{LABEL_PREFIX}app"
APP_NAME = "agentide"
RUNNER_PATH = "/opt/agentide/runner.py"
# The image's execute-only python3 copy: the runner is non-dumpable from its start. Where
# it cannot be executed (gVisor refuses files the user cannot read), plain python3 runs the
# runner, which then makes itself non-dumpable a few milliseconds into its start.
RUNNER_PYTHON = "/opt/agentide/python3"
FALLBACK_PYTHON = "python3"
SANDBOX_UID = "1000:1000"
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")

# Seconds a host waits past a command's own timeout before it declares the runner lost.
HOST_GRACE_S = 30.0
# A runner says "ready" within milliseconds; past the first delay the container is checked.
RUNNER_START_CHECK_S = 2.0
RUNNER_START_TIMEOUT_S = 15.0
# Host pids cgroup limit of a gVisor sandbox: its sentry's threads plus room per sandbox
# process (measured: ~60 at rest, 10-14 per process in a fork bomb, more in bursts), at most
# RUNSC_PIDS_MAX (the sentry's Go runtime stops at 10,000 threads anyway).
RUNSC_PIDS_BASE = 256
RUNSC_PIDS_PER_PROCESS = 32
RUNSC_PIDS_MAX = 12288
# Seconds without the runner's "started" after which the engine is asked whether the
# container still runs ...
STARTED_CHECK_S = 2.0
# ... and after how long without output a running command's container is checked.
LIVENESS_CHECK_S = 10.0
READ_SIZE = 256 * 1024
MAX_COMMAND_BYTES = 120 * 1024
# Idle runner connections kept per sandbox, and for how long (seconds).
MAX_IDLE_PER_SANDBOX = 2
IDLE_CONNECTION_S = 600.0

# The command wrapper the image installs as /opt/agentide/command.sh; the one-exec fallback
# (images without the runner) passes its text inline.
_WRAPPER_SOURCE = (importlib.resources.files("agentide.sandboxes.runner")
                   .joinpath("command.sh").read_text())

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

# Workspace checkpoints run their helpers as commands of the sandbox (as its user, so they
# read and remove only what the sandbox's own code could), each replacing the command's
# shell at once (``exec``: the session's saved cwd/env are neither used nor re-saved) by a
# bash with an empty environment and the image's own tools, so nothing a cell exported
# (PATH, TAR_OPTIONS, LC_ALL...) changes what they do.
_CLEAN_BASH = ("exec /usr/bin/env -i PATH=/usr/bin:/bin LC_ALL=C.UTF-8 "
               "/bin/bash --noprofile --norc -c ")
# One record per entry, NUL-separated fields (names may hold newlines): type, permission
# bits (octal), size, mtime, ctime, inode, symlink target, path relative to /workspace.
_SCAN_FORMAT = r"%y\0%m\0%s\0%T@\0%C@\0%i\0%l\0%P\0"
_SCAN_FIELDS = 8
# $1 = byte cap; then find's expression.
# $1 = byte cap, $2 = the earlier scan's clock ("" for none), $3 = byte cap of the changed
# files; then find's expression. Prints the clock, the listing, an "END" record, and (with
# $2) a tar of the regular files whose ctime is past $2, named in the same traversal.
_SCAN = r"""
cap="$1"; since="$2"; changed_cap="$3"; shift 3
cd /workspace || exit 3
printf '%s\0' "$(date +%s.%N)"
if [ -n "$since" ] && names=$(mktemp /tmp/.agentide-changed.XXXXXX 2>/dev/null); then
    find -P . -mindepth 1 "$@" -type f -newerct "@$since" -fprint0 "$names" | head -c "$cap"
    printf 'END\0\0\0\0\0\0\0\0'
    tar -c -f - --null -T "$names" --no-recursion --hard-dereference --format=posix 2>/dev/null \
        | head -c "$changed_cap"
    rm -f "$names"
else
    find -P . -mindepth 1 "$@" | head -c "$cap"
    printf 'END\0\0\0\0\0\0\0\0'
fi
exit 0
"""
# Regular files as a tar on stdout; missing ones are left out (tar exits 2 for them).
_READ = r"""
cd /workspace || exit 3
tar -c -f - --no-recursion --hard-dereference --format=posix --ignore-failed-read -- "$@" \
    2>/dev/null
exit 0
"""
# Remove entries, never following a symlink: their parent directories (and directories
# inside them) are made writable for the sandbox user first.
_REMOVE = r"""
cd /workspace || exit 3
for p in "$@"; do
    parent="${p%/*}"
    [ -L "$parent" ] || chmod u+rwx -- "$parent" 2>/dev/null
    if [ -d "$p" ] && [ ! -L "$p" ]; then
        find -P "$p" -type d -exec chmod u+rwx -- {} + 2>/dev/null
    fi
    rm -rf -- "$p"
    if [ -e "$p" ] || [ -L "$p" ]; then echo "cannot remove ${p#./}" >&2; failed=1; fi
done
exit "${failed:-0}"
"""
# Bytes of quoted path arguments per helper command (commands are at most
# MAX_COMMAND_BYTES).
_ARGS_PER_COMMAND = 96 * 1024
_HELPER_TIMEOUT_S = 600.0

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


# A terminal without the runner (gVisor, images without it): one ``docker exec`` with a TTY
# whose raw stream the host reads and writes. $1 = terminal id, $2 = the command wrapper,
# $3 = the kill script, $4/$5 = rows/cols. An earlier terminal of the sandbox still running
# (its worker died: a TTY exec outlives its connection) is killed first, since a session has
# one terminal. Then the wrapper, in standalone mode, loads the session's cwd/env under the
# cells' rules, records the group, and becomes the login shell (no state is saved on exit).
_EXEC_TERMINAL = r"""
run=/tmp/.agentide; mkdir -p "$run" 2>/dev/null
for f in "$run"/*.terminal; do
    [ -e "$f" ] || continue
    old="${f##*/}"; old="${old%.terminal}"
    [ "$old" = "$1" ] || bash --noprofile --norc -c "$3" agentide "$old"
    rm -f "$f"
done
: > "$run/$1.terminal"
stty sane iutf8 rows "$4" cols "$5" 2>/dev/null
exec bash --noprofile --norc -c "$2" agentide \
    'export TERM=xterm-256color; exec bash -l' "$1" standalone
"""
# Waiting for the engine to report an ended terminal's exit code, at most (seconds).
EXEC_TERMINAL_EXIT_S = 5.0


def _label(key: str) -> str:
    return f"{LABEL_PREFIX}{key}"


RUNNER_KEY_LABEL = _label("runner-key")
# What a call to the engine can raise: the SDK's errors, and the HTTP layer's own (a read
# timeout when the engine is stuck, e.g. on a wedged gVisor sandbox). Both become
# SandboxErrors.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _hardened(limits: SandboxLimits) -> dict[str, Any]:
    """Create options of every container that runs user code or touches user files: the
    sandboxes and the fork copy helper."""
    memory = f"{int(limits.memory_mb)}m"
    fsize = int(limits.fsize_mb) * 1024 * 1024
    pids = int(limits.pids_limit)
    ulimits = [
        Ulimit(name="nofile", soft=limits.nofile, hard=limits.nofile),
        Ulimit(name="fsize", soft=fsize, hard=fsize),
        Ulimit(name="core", soft=0, hard=0),
    ]
    if limits.runtime.startswith("runsc"):
        # gVisor's own threads live in the container's pids cgroup (8-14 host threads per
        # sandbox process on the ptrace platform, ~60 at rest) and the whole sandbox dies
        # when that cgroup is full. So the cgroup gets room for them, and the sandbox's
        # process limit is RLIMIT_NPROC, which gVisor's kernel enforces per sandbox (under
        # runc it would count every uid-1000 process on the host).
        ulimits.append(Ulimit(name="nproc", soft=pids, hard=pids))
        pids = min(RUNSC_PIDS_BASE + RUNSC_PIDS_PER_PROCESS * pids, RUNSC_PIDS_MAX)
    return {
        "user": SANDBOX_UID,
        "environment": {},  # never the host's environment
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "init": True,
        "pids_limit": pids,
        "mem_limit": memory,
        "memswap_limit": memory,  # no swap: memory + swap == memory
        "nano_cpus": int(limits.cpus * 1e9),
        "ulimits": ulimits,
        "read_only": True,
        "runtime": limits.runtime or None,
    }


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


def _check_pty_size(rows: int, cols: int) -> None:
    if not (isinstance(rows, int) and isinstance(cols, int) and 1 <= rows <= MAX_PTY_ROWS
            and 1 <= cols <= MAX_PTY_COLS):
        raise SandboxError(f"terminal size {rows!r}x{cols!r} is outside 1..{MAX_PTY_ROWS} "
                           f"rows and 1..{MAX_PTY_COLS} columns", permanent=True)


# Files move between the engine and this process in pieces of this size.
FILE_CHUNK_BYTES = 64 * 1024


def _check_size(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise FileTooLarge(f"{what} is {size} bytes; the limit is {limit}", size=size, limit=limit)


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (an archive streaming from the
    engine), holding at most one chunk at a time."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            rest, self._pending = self._pending + b"".join(self._chunks), b""
            return rest
        parts: list[bytes] = []
        while size > 0:
            if not self._pending:
                self._pending = next(self._chunks, b"")
                if not self._pending:
                    break
            take, self._pending = self._pending[:size], self._pending[size:]
            parts.append(take)
            size -= len(take)
        return b"".join(parts)


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


class RunnerProtocolError(_RunnerLost):
    """The runner sent something outside the protocol (a frame too long, of an unknown kind,
    with a bad id or a payload that breaks its schema). Nothing more from that connection is
    believed: it is dropped, and the command it carried fails."""


# The longest payload the host accepts per frame kind. The runner sends output in chunks of
# at most 64 KiB (runner.READ_SIZE) and small JSON objects otherwise; a longer frame is a
# broken or forged stream, refused before any of it is buffered.
# Terminal frames: P (opened, JSON), T (output bytes, at most 64 KiB like O/E), Q (closed, JSON).
FRAME_LIMITS = {b"S": 4096, b"O": 64 * 1024, b"E": 64 * 1024, b"X": 16 * 1024, b"R": 64 * 1024,
                b"P": 4096, b"T": 64 * 1024, b"Q": 4096}
JSON_KINDS = (b"S", b"X", b"R", b"P", b"Q")
MAX_ID_BYTES = 100
OUTCOMES = frozenset({"exit", "timeout", "cancelled", "oom"})
_INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Frame:
    """One runner frame: its kind, command id ("" for runner-level replies), raw payload and,
    for the JSON kinds (S, X, R), the decoded and validated object."""

    kind: bytes
    id: str
    data: bytes
    message: dict[str, Any]


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_message(kind: bytes, message: object) -> dict[str, Any]:
    """The payload of a JSON frame, checked against its kind's schema."""
    if not isinstance(message, dict):
        raise RunnerProtocolError(f"{kind.decode()} payload is not a JSON object")
    if kind in (b"S", b"P") and not _is_int(message.get("pgid"), 1, _INT32[1]):
        raise RunnerProtocolError(f"{kind.decode()} payload: pgid is not a process id")
    if kind == b"Q":
        code = message.get("exit_code")
        if code is not None and not _is_int(code, *_INT32):
            raise RunnerProtocolError("Q payload: exit_code is not a 32-bit integer")
    if kind == b"X":
        if message.get("outcome") not in OUTCOMES:
            raise RunnerProtocolError("X payload: unknown outcome")
        code = message.get("exit_code")
        if code is not None and not _is_int(code, *_INT32):
            raise RunnerProtocolError("X payload: exit_code is not a 32-bit integer")
        duration = message.get("duration")
        if (not isinstance(duration, int | float) or isinstance(duration, bool)
                or not 0 <= duration <= 10**7):
            raise RunnerProtocolError("X payload: duration is not a number of seconds")
        if not _is_int(message.get("leftovers", 0), 0, 10**6):
            raise RunnerProtocolError("X payload: leftovers is not a count")
        if not _is_int(message.get("env_dropped", 0), 0, 10**6):
            raise RunnerProtocolError("X payload: env_dropped is not a count")
        refused = message.get("env_refused", [])
        if (not isinstance(refused, list) or len(refused) > 20
                or not all(isinstance(n, str) and 0 < len(n) <= 100 for n in refused)):
            raise RunnerProtocolError("X payload: env_refused is not a short list of names")
    return message


class FrameReader:
    """Splits the runner's stdout into frames, refusing anything outside the protocol.

    Memory is bounded: a header is checked before its payload is waited for, so at most one
    frame of the largest allowed kind (plus one read) is ever buffered. Every violation
    raises ``RunnerProtocolError``; after one, the reader must not be used again.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes arrive."""
        buf = self._buf
        if len(buf) < _FRAME.size:
            return None
        kind, size, id_len = _FRAME.unpack_from(buf)
        limit = FRAME_LIMITS.get(kind)
        if limit is None:
            raise RunnerProtocolError(f"unknown frame kind {kind!r}")
        if size > limit:
            raise RunnerProtocolError(
                f"{kind.decode()} frame of {size} bytes (at most {limit} allowed)")
        if id_len > MAX_ID_BYTES:
            raise RunnerProtocolError(f"command id of {id_len} bytes (at most {MAX_ID_BYTES})")
        end = _FRAME.size + id_len + size
        if len(buf) < end:
            return None
        raw_id = bytes(buf[_FRAME.size : _FRAME.size + id_len])
        data = bytes(buf[_FRAME.size + id_len : end])
        del buf[:end]
        try:
            ident = raw_id.decode("ascii")
        except UnicodeDecodeError:
            raise RunnerProtocolError(f"command id is not ASCII: {raw_id[:40]!r}") from None
        if not (COMMAND_ID_RE.match(ident) or (kind == b"R" and ident == "")):
            raise RunnerProtocolError(f"invalid command id {ident[:40]!r}")
        message: dict[str, Any] = {}
        if kind in JSON_KINDS:
            try:
                decoded = json.loads(data)
            except ValueError:
                raise RunnerProtocolError(f"{kind.decode()} payload is not JSON") from None
            message = _check_message(kind, decoded)
        return Frame(kind, ident, data, message)


class RunnerConnection:
    """One long-lived ``docker exec`` into ``runner.py serve`` (``open``), or any socket that
    speaks Docker's multiplexed stream to a runner.

    Not thread-safe: the backend hands a connection to one command at a time.
    """

    def __init__(self, sock: socket.socket, container_id: str, holder: Any = None) -> None:
        self.container_id = container_id
        self.pid = os.getpid()
        self._holder = holder  # keeps the HTTP response (and so the socket) alive
        self.sock = sock
        self.sock.setblocking(True)
        self._raw = bytearray()  # docker-multiplexed bytes not yet split
        self._frames = FrameReader()  # runner stdout
        self._err = bytearray()  # runner stderr, kept for diagnostics
        self.broken = False
        self.last_used = time.monotonic()
        # A terminal's connection is read by its pump and written by whoever types.
        self._send_lock = threading.Lock()

    @classmethod
    def open(cls, api: Any, container_id: str, python: str = RUNNER_PYTHON) -> RunnerConnection:
        """Start a runner in the container and wait for its "ready"."""
        exec_id = api.exec_create(
            container_id,
            [python, "-I", "-S", RUNNER_PATH, "serve"],
            stdin=True,
            stdout=True,
            stderr=True,
            tty=False,
            user=SANDBOX_UID,
            workdir=WORKSPACE,
        )["Id"]
        raw = api.exec_start(exec_id, socket=True)
        conn = cls(getattr(raw, "_sock", raw), container_id, raw)
        started = time.monotonic()
        try:
            try:
                frame = conn.read_frame(started + RUNNER_START_CHECK_S)
            except TimeoutError:
                # Under gVisor a container can vanish right after its start: a gone
                # container is a lost sandbox (the caller recreates it), not a slow runner.
                state = api.inspect_container(container_id)["State"]
                if not state.get("Running"):
                    raise SandboxNotRunning(
                        "the sandbox stopped while its runner started") from None
                frame = conn.read_frame(started + RUNNER_START_TIMEOUT_S)
        except BaseException:
            conn.close()
            raise
        if frame.kind != b"R" or not frame.message.get("ready"):
            conn.close()
            raise _RunnerLost(f"runner did not start: {bytes(conn._err[-500:])!r}")
        return conn

    def send(self, message: dict[str, object]) -> None:
        body = json.dumps(message).encode()
        try:
            with self._send_lock:
                self.sock.sendall(_REQUEST.pack(len(body)) + body)
        except OSError as exc:
            self.broken = True
            # The request never reached a runner (a partial frame is dropped with the socket):
            # nothing ran, so a caller may safely retry on a fresh connection.
            raise _NotStarted(str(exc)) from exc

    def read_frame(self, deadline: float) -> Frame:
        """Next runner frame. Raises TimeoutError at deadline, RunnerProtocolError (and
        drops the connection) on anything outside the protocol."""
        while True:
            try:
                frame = self._frames.next_frame()
            except RunnerProtocolError:
                self.close()
                raise
            if frame is not None:
                return frame
            self._fill(deadline)

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
                self._frames.feed(raw[start : start + size])
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
            if self._holder is not None:
                self._holder.close()


class _ExecTerminal:
    """The channel of a terminal without the runner: the raw stream of a TTY ``docker
    exec``. Read by one thread; written, resized and closed from others."""

    def __init__(self, exec_id: str, sock: socket.socket, holder: Any) -> None:
        self.exec_id = exec_id
        self.sock = sock
        self.sock.setblocking(True)
        self._holder = holder  # keeps the HTTP response (and so the socket) alive
        self._send_lock = threading.Lock()
        self._poller = select.poll()  # a worker's descriptors may be past select()'s 1024
        self._poller.register(self.sock, select.POLLIN)
        self.broken = False

    def read(self, timeout_s: float) -> bytes | None:
        """Output bytes; None after ``timeout_s``; b"" at the end of the stream. Raises
        OSError when the connection broke."""
        if not self._poller.poll(max(int(timeout_s * 1000), 0)):
            return None
        # Chunks no larger than the runner's terminal frames: the pump's messages stay small.
        data = self.sock.recv(FRAME_LIMITS[b"T"])
        if not data:
            self.close()
        return data

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError):
            self.sock.close()
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
        self._gvisor: dict[str, bool] = {}
        self._cancelled: set[str] = set()
        self._runner_keys: dict[str, bytes] = {}
        self._runner_python: dict[str, str] = {}  # containers where RUNNER_PYTHON fails
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
                except ENGINE_ERRORS as exc:
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
        try:
            self._create_volume(volume_name, labels, limits.disk_mb, reuse=bool(spec.volume))
            container = self.client.containers.create(
                spec.image,
                name=name,
                hostname="sandbox",
                working_dir=WORKSPACE,
                # The key the host's cancel tokens are made with: labels are out of the
                # sandbox's sight (DockerBackend._cancel_token).
                labels={**labels, RUNNER_KEY_LABEL: secrets.token_hex(16)},
                **_hardened(limits),
                volumes={volume_name: {"bind": WORKSPACE, "mode": "rw"}},
                # A tmpfs inside the container, not a host path; nothing on it can be run
                # (venvs and builds live in /workspace).
                tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size={int(limits.tmp_mb)}m,mode=1777"},  # noqa: S108
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
            state = self._inspect(handle.container_id)["State"]
            if not state.get("Running"):
                self._forget(handle.container_id)
                self._mount_workspace(handle.volume)
                self.api.start(handle.container_id)
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "start sandbox") from exc

    def is_running(self, handle: SandboxHandle) -> bool:
        state = self._state(handle)
        return bool(state.get("Running")) and not state.get("Paused")

    def _state(self, handle: SandboxHandle) -> dict[str, Any]:
        try:
            state: dict[str, Any] = self._inspect(handle.container_id)["State"]
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "inspect sandbox") from exc
        return state

    def _inspect(self, container_id: str) -> dict[str, Any]:
        """The engine's view of the container. What never changes for a container (its
        runner key label, its runtime) is remembered from every look, so the first command
        after a pool claim or a start asks the engine once, not three times."""
        info: dict[str, Any] = self.api.inspect_container(container_id)
        labels = (info.get("Config") or {}).get("Labels") or {}
        self._runner_keys[container_id] = labels.get(RUNNER_KEY_LABEL, "").encode()
        runtime = str((info.get("HostConfig") or {}).get("Runtime") or "")
        self._gvisor[container_id] = runtime.startswith("runsc")
        return info

    def stop(self, handle: SandboxHandle) -> None:
        self._forget(handle.container_id)
        try:
            self.api.stop(handle.container_id, timeout=2)
        except docker.errors.NotFound:
            return
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "stop sandbox") from exc

    def destroy(self, handle: SandboxHandle) -> None:
        self._forget(handle.container_id)
        try:
            self.api.remove_container(handle.container_id, force=True, v=False)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "remove sandbox") from exc
        self.remove_volume(handle.volume)

    def remove_volume(self, name: str) -> None:
        if not name:
            return
        try:
            self.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "remove workspace volume") from exc
        disk = self._disk(name)
        if disk is not None:
            disk.release()

    def copy_workspace(
        self, source_volume: str, target_volume: str, *, image: str, limits: SandboxLimits
    ) -> None:
        helper = f"agentide-copy-{uuid.uuid4().hex[:12]}"
        self._mount_workspace(source_volume)
        self._mount_workspace(target_volume)
        try:
            container = self.client.containers.create(
                image,
                ["cp", "-a", "/from/.", "/to/"],
                name=helper,
                **_hardened(limits),  # it runs the image's cp on user files: a sandbox too
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
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "copy workspace") from exc

    def _forget(self, container_id: str) -> None:
        self._runner_keys.pop(container_id, None)
        with self._lock:
            conns = self._idle.pop(container_id, [])
        for conn in conns:
            conn.close()

    # -- commands ---------------------------------------------------------------------

    def _cancel_token(self, container_id: str, command_id: str) -> str:
        """Proof for the runner that a kill comes from the host: HMAC of the command id
        with the container's runner key, a label nothing inside the sandbox can read. A
        runner reports "cancelled" for a kill note only when it carries this token, so no
        command can make another cell look cancelled. "" for containers without a key."""
        key = self._runner_keys.get(container_id)
        if key is None:
            try:
                self._inspect(container_id)
            except ENGINE_ERRORS as exc:
                raise self._error(exc, "inspect sandbox") from exc
            key = self._runner_keys[container_id]
        if not key:
            return ""
        return hmac.new(key, command_id.encode(), hashlib.sha256).hexdigest()

    def _under_gvisor(self, container_id: str) -> bool:
        if container_id in self._gvisor:
            return self._gvisor[container_id]
        try:
            self._inspect(container_id)
        except docker.errors.NotFound as exc:
            raise SandboxNotRunning("sandbox container is gone") from exc
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "inspect sandbox") from exc
        return self._gvisor[container_id]

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
        if self._under_gvisor(container_id):
            # gVisor cannot run the execute-only python copy, and it lets a same-uid process
            # open a non-dumpable runner's /proc/<pid>/fd, so a command could write frames
            # into the runner's output. Under gVisor every command is its own exec instead
            # (no faster with the runner there: bench/results/2026-12-06-sandbox-runtimes.md).
            logger.info("sandbox %s runs under gVisor: one exec per command", container_id[:12])
            self._no_runner.add(container_id)
            return None
        python = self._runner_python.get(container_id, RUNNER_PYTHON)
        try:
            try:
                return RunnerConnection.open(self.api, container_id, python)
            except _RunnerLost:
                if python != RUNNER_PYTHON:
                    raise
                conn = RunnerConnection.open(self.api, container_id, FALLBACK_PYTHON)
                logger.warning("sandbox %s: %s does not run; the runner starts from %s",
                               container_id[:12], RUNNER_PYTHON, FALLBACK_PYTHON)
                self._runner_python[container_id] = FALLBACK_PYTHON
                return conn
        except (_RunnerLost, TimeoutError) as exc:
            if not self.is_running(SandboxHandle(container_id, "")):
                # The container died under the runner (seen under gVisor right after start).
                raise SandboxNotRunning("sandbox stopped while its runner started") from exc
            if self._has_runner(container_id):
                raise SandboxError(
                    f"sandbox runner failed to start: {exc}", permanent=False
                ) from exc
            logger.info("sandbox %s has no runner; one exec per command", container_id[:12])
            self._no_runner.add(container_id)
            return None
        except ENGINE_ERRORS as exc:
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
        except ENGINE_ERRORS:
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
                           "timeout": timeout_s,
                           "token": self._cancel_token(handle.container_id, command_id)})
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
                quiet_s = LIVENESS_CHECK_S if started_ else STARTED_CHECK_S
                try:
                    frame = conn.read_frame(
                        min(deadline, time.monotonic() + quiet_s))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise
                    # A container that died under its runner (seen under gVisor) may leave
                    # the socket open: after a quiet spell, ask the engine.
                    try:
                        state = self._state(handle)
                    except SandboxNotFound:
                        state = {}
                    except SandboxError:
                        continue  # the engine is busy or away: keep waiting for the runner
                    if state.get("Running") and not state.get("Paused"):
                        continue
                    if not started_:
                        raise SandboxNotRunning(
                            "sandbox stopped before the command started") from None
                    if state.get("OOMKilled"):
                        # Under gVisor the sandbox's kernel shares its memory limit, so an
                        # out-of-memory command takes the whole sandbox down with it.
                        return ExecResult(
                            "oom", 137, time.monotonic() - started, command_id, "runner")
                    raise SandboxError("the sandbox stopped during the command",
                                       permanent=False) from None
                if frame.id != command_id:
                    continue
                if frame.kind == b"S":
                    started_ = True
                elif frame.kind == b"O":
                    on_output("stdout", frame.data)
                elif frame.kind == b"E":
                    on_output("stderr", frame.data)
                elif frame.kind == b"X":
                    info = frame.message
                    outcome = info["outcome"]
                    # A cancel sent through another runner connection (or exec) reaches the
                    # command as a plain kill; only the host knows it was a cancel.
                    if command_id in self._cancelled and outcome == "exit":
                        outcome = "cancelled"
                    self._cancelled.discard(command_id)
                    done = True
                    return ExecResult(
                        outcome=outcome, exit_code=info.get("exit_code"),
                        duration_s=float(info["duration"]), command_id=command_id,
                        source="runner", leftover_processes=info.get("leftovers", 0),
                        env_refused=tuple(info.get("env_refused", ())),
                        env_dropped=info.get("env_dropped", 0))
                elif frame.kind == b"R" and "error" in frame.message:
                    done = True
                    raise SandboxError(
                        f"runner refused the command: {str(frame.message['error'])[:200]}",
                        permanent=True)
        except RunnerProtocolError as exc:
            # Nothing more from this runner is believed; the runner kills the command when
            # its connection closes (below), and the caller records the failure.
            raise SandboxError(
                f"the sandbox runner broke the protocol ({exc}); its connection was dropped "
                "and the command was stopped", permanent=True) from exc
        except TimeoutError:
            self.cancel(handle, command_id)
            return ExecResult("timeout", None, time.monotonic() - started, command_id, "runner")
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
        streams: list[Any] = []

        def expire() -> None:
            expired.set()
            # A wedged sandbox (seen under gVisor after a fork bomb) may never end the
            # stream, nor answer the kill's exec: stop reading first, then kill.
            for open_stream in streams:
                with contextlib.suppress(Exception):
                    open_stream.close()
            try:
                self._kill_standalone(handle, command_id)
            except SandboxError:
                logger.warning("could not kill timed-out command %s", command_id)

        timer = threading.Timer(timeout_s + 1, expire) if timeout_s > 0 else None
        if timer is not None:
            # The kill's own exec may never answer in a wedged sandbox: never let that thread
            # hold up a worker's shutdown.
            timer.daemon = True
        try:
            exec_id = self.api.exec_create(
                handle.container_id,
                ["bash", "--noprofile", "--norc", "-c", _STANDALONE, "agentide",
                 command, command_id, limit, _WRAPPER_SOURCE],
                stdout=True, stderr=True, stdin=False, tty=False,
                user=SANDBOX_UID, workdir=WORKSPACE,
                environment={"AGENTIDE_COMMAND_ID": command_id},
            )["Id"]
            stream = self.api.exec_start(exec_id, stream=True, demux=True)
            streams.append(stream)
            if timer is not None:
                timer.start()
            try:
                for out, err in stream:
                    if out:
                        on_output("stdout", out)
                    if err:
                        on_output("stderr", err)
            except (OSError, ValueError, AttributeError):
                if not expired.is_set():
                    raise
            try:
                exit_code = self.api.exec_inspect(exec_id).get("ExitCode")
            except docker.errors.NotFound:
                # The container went away under the command. Under gVisor the sandbox's
                # kernel shares its memory limit: an out-of-memory command takes it down.
                try:
                    state = self._state(handle)
                except SandboxNotFound:
                    state = {}
                if state.get("OOMKilled"):
                    return ExecResult("oom", 137, time.monotonic() - started, command_id, "exec")
                raise SandboxNotRunning("the sandbox stopped during the command") from None
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "exec") from exc
        finally:
            if timer is not None:
                timer.cancel()
        duration = time.monotonic() - started
        if command_id in self._cancelled:
            self._cancelled.discard(command_id)
            return ExecResult("cancelled", exit_code, duration, command_id, "exec")
        if expired.is_set() or (exit_code == 137 and timeout_s > 0 and duration >= timeout_s):
            if not expired.is_set():
                self._kill_standalone(handle, command_id)  # children that left the group
            return ExecResult("timeout", exit_code, duration, command_id, "exec")
        return ExecResult("exit", exit_code, duration, command_id, "exec")

    def cancel(self, handle: SandboxHandle, command_id: str) -> bool:
        _check_command_id(command_id)
        self._cancelled.add(command_id)
        if handle.container_id in self._no_runner:
            return self._kill_standalone(handle, command_id)
        token = self._cancel_token(handle.container_id, command_id)
        # An idle connection of this process answers without a new exec (which matters when
        # a fork bomb has used up the pids limit).
        with self._lock:
            idle = self._idle.get(handle.container_id) or []
            conn = idle.pop() if idle else None
        if conn is not None:
            try:
                conn.send({"op": "kill", "id": command_id, "token": token})
                deadline = time.monotonic() + 10
                while True:
                    frame = conn.read_frame(deadline)
                    if frame.kind == b"R" and frame.id == command_id:
                        self._checkin(conn)
                        return bool(frame.message.get("killed"))
            except (_RunnerLost, TimeoutError):
                conn.close()
        try:
            exec_id = self.api.exec_create(
                handle.container_id,
                [self._runner_python.get(handle.container_id, RUNNER_PYTHON), "-I", "-S",
                 RUNNER_PATH, "kill", command_id, token],
                user=SANDBOX_UID,
            )["Id"]
            output = self.api.exec_start(exec_id)
        except ENGINE_ERRORS as exc:
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
            # Detached: a wedged sandbox (seen under gVisor) may never finish the kill's exec,
            # and nobody may wait for it for ever.
            self.api.exec_start(exec_id, detach=True)
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "cancel") from exc
        return True

    # -- terminals --------------------------------------------------------------------
    # A terminal owns a runner connection of its own (never returned to the idle pool): the
    # PTY is a child of that runner and ends when the connection does. Where no runner is
    # used (gVisor, images without it) a terminal is a TTY exec of its own (_EXEC_TERMINAL):
    # its output is the exec's raw stream and its exit code comes from the engine, so there
    # are no frames for a process in the sandbox to forge.

    def open_pty(self, handle: SandboxHandle, terminal_id: str, *, rows: int,
                 cols: int) -> Pty:
        _check_command_id(terminal_id)
        _check_pty_size(rows, cols)
        for attempt in range(2):
            conn = self._checkout(handle.container_id)
            if conn is None:
                return self._open_exec_pty(handle, terminal_id, rows, cols)
            try:
                conn.send({"op": "pty_open", "id": terminal_id, "rows": rows, "cols": cols})
            except _NotStarted:
                conn.close()
                if attempt == 0:
                    continue  # a cached connection went stale
                raise SandboxError("sandbox runner connection lost", permanent=False) from None
            try:
                deadline = time.monotonic() + RUNNER_START_TIMEOUT_S
                while True:
                    frame = conn.read_frame(deadline)
                    if frame.id != terminal_id:
                        continue
                    if frame.kind == b"P":
                        return Pty(terminal_id, handle, frame.message["pgid"], conn)
                    if frame.kind == b"R" and "error" in frame.message:
                        raise SandboxError(
                            "runner refused the terminal: "
                            f"{str(frame.message['error'])[:200]}", permanent=True)
            except RunnerProtocolError as exc:
                conn.close()
                raise SandboxError(f"the sandbox runner broke the protocol ({exc})",
                                   permanent=True) from exc
            except (_RunnerLost, TimeoutError) as exc:
                conn.close()
                raise SandboxError(f"could not open a terminal: {exc!r}",
                                   permanent=False) from exc
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _open_exec_pty(self, handle: SandboxHandle, terminal_id: str, rows: int,
                       cols: int) -> Pty:
        try:
            exec_id = self.api.exec_create(
                handle.container_id,
                ["bash", "--noprofile", "--norc", "-c", _EXEC_TERMINAL, "agentide",
                 terminal_id, _WRAPPER_SOURCE, _STANDALONE_KILL, str(rows), str(cols)],
                stdin=True, stdout=True, stderr=True, tty=True,
                user=SANDBOX_UID, workdir=WORKSPACE,
                environment={"AGENTIDE_COMMAND_ID": terminal_id},
            )["Id"]
            raw = self.api.exec_start(exec_id, tty=True, socket=True)
        except docker.errors.NotFound as exc:
            raise SandboxNotRunning("sandbox container is gone") from exc
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "open terminal") from exc
        term = _ExecTerminal(exec_id, getattr(raw, "_sock", raw), raw)
        try:
            self.api.exec_resize(exec_id, height=rows, width=cols)
        except ENGINE_ERRORS:
            logger.info("terminal %s: first resize failed; stty set its size", terminal_id)
        return Pty(terminal_id, handle, 0, term)

    def _exec_exit_code(self, term: _ExecTerminal) -> int | None:
        """The ended terminal's exit code, once the engine has it (None if it never says)."""
        deadline = time.monotonic() + EXEC_TERMINAL_EXIT_S
        while True:
            try:
                state = self.api.exec_inspect(term.exec_id)
            except ENGINE_ERRORS:
                return None
            if not state.get("Running") or time.monotonic() > deadline:
                code = state.get("ExitCode")
                return code if isinstance(code, int) else None
            time.sleep(0.05)  # the stream ended a moment before the engine noticed the exit

    @staticmethod
    def _pty_conn(pty: Pty) -> RunnerConnection:
        conn = pty.channel
        if not isinstance(conn, RunnerConnection):
            raise SandboxError("not a terminal of this backend", permanent=True)
        return conn

    def read_pty(self, pty: Pty, timeout_s: float) -> PtyOutput | None:
        if isinstance(pty.channel, _ExecTerminal):
            term = pty.channel
            if term.broken:
                return PtyOutput(closed=True, exit_code=self._exec_exit_code(term))
            try:
                data = term.read(timeout_s)
            except (OSError, ValueError) as exc:
                term.close()
                raise SandboxError(f"terminal connection lost: {exc}", permanent=False) from exc
            if data is None:
                return None
            if data:
                return PtyOutput(data=data)
            return PtyOutput(closed=True, exit_code=self._exec_exit_code(term))
        conn = self._pty_conn(pty)
        if conn.broken:
            return PtyOutput(closed=True)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                frame = conn.read_frame(deadline)
                if frame.id != pty.terminal_id:
                    continue
                if frame.kind == b"T":
                    return PtyOutput(data=frame.data)
                if frame.kind == b"Q":
                    conn.close()
                    return PtyOutput(closed=True, exit_code=frame.message.get("exit_code"))
                if frame.kind == b"R" and "error" in frame.message:
                    logger.info("terminal %s: %s", pty.terminal_id,
                                str(frame.message["error"])[:200])
        except TimeoutError:
            return None
        except RunnerProtocolError as exc:
            raise SandboxError(f"the sandbox runner broke the protocol ({exc}); the terminal "
                               "was closed", permanent=True) from exc
        except _RunnerLost as exc:
            conn.close()
            raise SandboxError(f"terminal connection lost: {exc}", permanent=False) from exc

    def _pty_send(self, pty: Pty, message: dict[str, object]) -> None:
        try:
            self._pty_conn(pty).send(message)
        except _NotStarted as exc:
            raise SandboxError(f"terminal connection lost: {exc}", permanent=False) from exc

    def write_pty(self, pty: Pty, data: bytes) -> None:
        if isinstance(pty.channel, _ExecTerminal):
            try:
                pty.channel.send(data)
            except OSError as exc:
                raise SandboxError(f"terminal connection lost: {exc}", permanent=False) from exc
            return
        for start in range(0, len(data), MAX_PTY_INPUT):
            chunk = data[start : start + MAX_PTY_INPUT]
            self._pty_send(pty, {"op": "pty_input", "id": pty.terminal_id,
                                 "data": base64.b64encode(chunk).decode()})

    def resize_pty(self, pty: Pty, rows: int, cols: int) -> None:
        _check_pty_size(rows, cols)
        if isinstance(pty.channel, _ExecTerminal):
            try:
                self.api.exec_resize(pty.channel.exec_id, height=rows, width=cols)
            except ENGINE_ERRORS as exc:
                raise self._error(exc, "resize terminal") from exc
            return
        self._pty_send(pty, {"op": "pty_resize", "id": pty.terminal_id,
                             "rows": rows, "cols": cols})

    def close_pty(self, pty: Pty) -> None:
        if isinstance(pty.channel, _ExecTerminal):
            if not pty.channel.broken:
                # Its stream ends when the shell dies: the reader sees the close.
                self._kill_standalone(pty.handle, pty.terminal_id)
            return
        conn = self._pty_conn(pty)
        if conn.broken:
            return
        try:
            conn.send({"op": "pty_close", "id": pty.terminal_id})
        except _NotStarted:
            conn.close()  # the runner kills the terminal when its connection drops

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
                stats = self._runner_stats(handle)
                if stats.memory_limit_bytes:  # 0: no cgroup in sight (gVisor)
                    return stats
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
                frame = conn.read_frame(deadline)
                if frame.kind == b"R" and frame.id == request_id:
                    reply = frame.message
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

    def leftover_processes(self, handle: SandboxHandle) -> list[LeftoverProcess]:
        if handle.container_id in self._no_runner:
            return []
        try:
            reply = self._runner_request(handle, "ps")
        except (_RunnerLost, TimeoutError):
            return []
        rows = reply.get("processes")
        if not isinstance(rows, list):
            return []
        found = []
        for row in rows[:50]:
            if not isinstance(row, dict):
                continue
            pid, command_id, cmd = row.get("pid"), row.get("id"), row.get("cmd")
            if (isinstance(pid, int) and isinstance(command_id, str)
                    and COMMAND_ID_RE.match(command_id) and isinstance(cmd, str)):
                found.append(LeftoverProcess(pid, command_id, cmd[:200]))
        return found

    def _engine_stats(self, handle: SandboxHandle) -> SandboxStats:
        try:
            raw = self.api.stats(handle.container_id, stream=False)
        except ENGINE_ERRORS as exc:
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
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "list sandboxes") from exc
        listings = []
        for row in rows:
            labels = {
                k[len(LABEL_PREFIX):]: v for k, v in (row.get("Labels") or {}).items()
                if k.startswith(LABEL_PREFIX) and k != RUNNER_KEY_LABEL
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
        except ENGINE_ERRORS as exc:
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
        except ENGINE_ERRORS as exc:
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

    def open_file(self, handle: SandboxHandle, path: str, *, max_bytes: int) -> FileStream:
        # The archive API reads a stopped container's volume as well as a running one's
        # (measured on this engine: a 3 MB file out of an exited sandbox in 50 ms).
        abs_path = workspace_path(path)
        if abs_path == WORKSPACE:
            raise SandboxError("/workspace is a directory", permanent=True)
        stat = self._walk_checked(handle.container_id, abs_path)
        if stat is None:
            raise SandboxError(f"{abs_path} does not exist", permanent=True)
        if stat["mode"] & _MODE_TYPE:
            raise SandboxError(f"{abs_path} is not a regular file", permanent=True)
        _check_size(abs_path, stat["size"], max_bytes)
        try:
            chunks, _ = self.api.get_archive(
                handle.container_id, abs_path, chunk_size=FILE_CHUNK_BYTES
            )
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "read file") from exc
        try:
            # Stream mode: the tar is read front to back through a small buffer, never whole.
            # (Not a with block: the open archive outlives this call, in read() below.)
            tar = tarfile.open(fileobj=_ChunkReader(chunks), mode="r|")  # noqa: SIM115
            member = tar.next()
            if member is None or not member.isreg():
                raise SandboxError(f"{abs_path} is not a regular file", permanent=True)
            # The file may have grown since the stat: the archive's header is what streams.
            _check_size(abs_path, member.size, max_bytes)
            content = tar.extractfile(member)
            assert content is not None
        except BaseException:
            chunks.close()
            raise

        def read() -> Iterator[bytes]:
            try:
                while piece := content.read(FILE_CHUNK_BYTES):
                    yield piece
            except (docker.errors.DockerException, requests.exceptions.RequestException,
                    tarfile.TarError) as exc:
                raise SandboxError(f"reading {abs_path} failed: {exc}", permanent=False) from exc
            finally:
                chunks.close()

        return FileStream(size=member.size, chunks=read(), close=chunks.close)

    def write_file(
        self, handle: SandboxHandle, path: str, data: bytes | BinaryIO, *, max_bytes: int
    ) -> None:
        source: BinaryIO = io.BytesIO(data) if isinstance(data, bytes) else data
        size = source.seek(0, io.SEEK_END) - source.seek(0)
        _check_size("the upload", size, max_bytes)
        abs_path = workspace_path(path)
        if abs_path == WORKSPACE:
            raise SandboxError("cannot write /workspace itself", permanent=True)
        stat = self._walk_checked(handle.container_id, abs_path)
        if stat is not None and stat["mode"] & _MODE_TYPE:
            raise SandboxError(f"{abs_path} exists and is not a regular file", permanent=True)
        parent, name = posixpath.split(abs_path)
        # The archive goes to the engine from a spooled file: small uploads stay in memory,
        # big ones are copied through a temporary file in chunks.
        small = size <= FILE_CHUNK_BYTES * 16
        with tempfile.SpooledTemporaryFile(max_size=FILE_CHUNK_BYTES * 16) as buf:
            with tarfile.open(fileobj=buf, mode="w") as tar:
                info = tarfile.TarInfo(name)
                info.size = size
                info.mode = 0o644
                info.uid = info.gid = 1000  # owned by the sandbox user, never root
                info.uname = info.gname = "agent"
                info.mtime = int(time.time())
                tar.addfile(info, source)
            buf.seek(0)
            try:
                self.api.put_archive(handle.container_id, parent, buf.read() if small else buf)
            except ENGINE_ERRORS as exc:
                raise self._error(exc, "write file") from exc

    # -- workspace checkpoints --------------------------------------------------------

    def _helper(self, handle: SandboxHandle, script: str, args: list[str],
                on_stdout: Callable[[bytes], None]) -> tuple[ExecResult, bytes]:
        """Run a checkpoint helper script (see ``_CLEAN_BASH``) with ``args``; stdout goes
        to ``on_stdout``, and the first 4 KiB of stderr come back with the result."""
        command = (_CLEAN_BASH + shlex.quote(script) + " agentide "
                   + " ".join(shlex.quote(a) for a in args))
        err = bytearray()

        def on_output(stream: str, data: bytes) -> None:
            if stream == "stdout":
                on_stdout(data)
            elif len(err) < 4096:
                err.extend(data[: 4096 - len(err)])

        result = self.exec(handle, command, command_id=f"ckpt-{uuid.uuid4().hex[:16]}",
                           timeout_s=_HELPER_TIMEOUT_S, on_output=on_output)
        if result.outcome != "exit":
            raise SandboxError(f"the workspace helper ended: {result.outcome}", permanent=False)
        return result, bytes(err)

    @staticmethod
    def _batches(paths: list[str]) -> Iterator[list[str]]:
        batch: list[str] = []
        size = 0
        for path in paths:
            arg = "./" + path
            cost = len(shlex.quote(arg).encode()) + 1
            if batch and size + cost > _ARGS_PER_COMMAND:
                yield batch
                batch, size = [], 0
            batch.append(arg)
            size += cost
        if batch:
            yield batch

    def scan_workspace(
        self, handle: SandboxHandle, *, ignore: list[IgnorePattern], max_entries: int,
        max_bytes: int, changed_since: str = "", max_changed_bytes: int = 0,
    ) -> WorkspaceScan:
        prune: list[str] = []
        for rule in ignore:
            test = ["-path", "./" + rule.pattern] if rule.anchored else ["-name", rule.pattern]
            if rule.dir_only:
                test = ["-type", "d", *test]
            prune += (["-o"] if prune else []) + test
        expression = (["(", *prune, ")", "-prune", "-o"] if prune else [])
        expression += ["-printf", _SCAN_FORMAT]
        since = changed_since if re.fullmatch(r"\d{1,12}(\.\d{1,9})?", changed_since) else ""
        # The listing and the changed files' tar come in one stream, spooled (a big tar
        # goes to disk) and split at the END record after the command.
        spool = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)  # noqa: SIM115
        limit = max_bytes + 64 + max_changed_bytes + 1024 * 1024
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > limit:
                raise FileTooLarge("the workspace scan", size=size, limit=limit)
            spool.write(data)

        try:
            result, err = self._helper(
                handle, _SCAN, [str(max_bytes + 1), since, str(max_changed_bytes), *expression],
                collect)
            if result.exit_code != 0:
                raise SandboxError(
                    f"scanning /workspace failed: {err.decode(errors='replace')[:300]}",
                    permanent=False)
            spool.seek(0)
            scan = self._parse_scan(spool, max_entries, max_bytes)
        except BaseException:
            spool.close()
            raise
        if since and scan.clock:
            scan.archive = spool  # positioned at the tar (a truncated scan has none)
        else:
            spool.close()
        return scan

    @staticmethod
    def _parse_scan(spool: IO[bytes], max_entries: int, max_bytes: int) -> WorkspaceScan:
        """The clock, then listing records up to the END record (leaving ``spool`` just past
        it); a listing cut by the byte cap is ``truncated``."""
        head = spool.read(max_bytes + 64 + 1)
        clock, _, rest = head.partition(b"\0")
        fields = rest.split(b"\0")
        entries: list[ScannedEntry] = []
        skipped: list[str] = []
        skipped_count = 0
        kinds = {b"f": "file", b"d": "dir", b"l": "symlink"}
        truncated = True
        consumed = len(clock) + 1
        for start in range(0, len(fields) - _SCAN_FIELDS + 1, _SCAN_FIELDS):
            kind, mode, size, mtime, ctime, inode, target, path = fields[
                start:start + _SCAN_FIELDS]
            consumed += sum(len(f) + 1 for f in fields[start:start + _SCAN_FIELDS])
            if kind == b"END":
                truncated = False
                break
            if len(entries) >= max_entries:
                break
            try:
                entries.append(ScannedEntry(
                    path.decode(),
                    kinds[kind],
                    int(mode, 8) & 0o7777,
                    int(size),
                    b":".join((size, mtime, ctime, inode, mode)).decode("ascii")[:200],
                    target.decode() if kind == b"l" else "",
                ))
            except (KeyError, ValueError):
                skipped_count += 1
                if len(skipped) < 20:
                    skipped.append(path.decode(errors="replace")[:200])
        spool.seek(consumed)
        valid_clock = re.fullmatch(rb"\d{1,12}\.\d{1,9}", clock)
        return WorkspaceScan(entries, skipped, skipped_count, truncated,
                             clock=clock.decode() if valid_clock and not truncated else "")

    def read_workspace_files(
        self, handle: SandboxHandle, paths: list[str], *, max_file_bytes: int,
        max_total_bytes: int, on_file: Callable[[str, int, IO[bytes]], None],
    ) -> None:
        wanted = set(paths)
        total = 0
        for batch in self._batches(paths):
            with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
                def collect(data: bytes, spool: Any = spool) -> None:
                    nonlocal total
                    total += len(data)
                    if total > max_total_bytes + 1024 * 1024:  # tar headers and padding
                        raise FileTooLarge("the files to checkpoint", size=total,
                                           limit=max_total_bytes)
                    spool.write(data)

                self._helper(handle, _READ, batch, collect)
                spool.seek(0)
                read_archive_files(spool, wanted, max_file_bytes=max_file_bytes,
                                   on_file=on_file)

    def remove_workspace_paths(self, handle: SandboxHandle, paths: list[str]) -> None:
        for batch in self._batches(paths):
            result, err = self._helper(handle, _REMOVE, batch, lambda data: None)
            if result.exit_code != 0:
                raise SandboxError(
                    "could not remove every path from /workspace: "
                    f"{err.decode(errors='replace')[:300]}", permanent=False)

    def put_workspace_archive(self, handle: SandboxHandle, archive: Iterable[bytes]) -> None:
        try:
            # An iterator goes up chunked, as it is produced: no copy of a big archive.
            self.api.put_archive(handle.container_id, WORKSPACE, archive)
        except docker.errors.NotFound as exc:
            raise SandboxNotFound("sandbox not found") from exc
        except ENGINE_ERRORS as exc:
            raise self._error(exc, "write workspace") from exc
