"""The sandbox backend interface: what the rest of AgentIDE may ask of a container engine.

Everything here is engine-neutral. ``backends/docker.py`` is the real implementation and the
only module that imports ``docker``; another engine (remote hosts, Kubernetes) implements the
same class. Backends know nothing about the database: callers pass specs and handles in and
store what comes back.
"""

from __future__ import annotations

import abc
import datetime as dt
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, BinaryIO, Literal, NamedTuple

Outcome = Literal["exit", "timeout", "cancelled", "oom"]
Stream = Literal["stdout", "stderr"]
OutputCallback = Callable[[Stream, bytes], None]

WORKSPACE = "/workspace"
# Default caps of one directory listing (entries, and bytes of listing output read).
MAX_LIST_ENTRIES = 5000
MAX_LIST_BYTES = 1024 * 1024


class SandboxError(Exception):
    """A backend operation failed.

    ``permanent`` tells the caller whether retrying can help: False for transient trouble
    (engine unreachable, a broken socket, a container still starting), True for requests
    that will fail the same way again (bad path, file too large, image missing).
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class SandboxNotRunning(SandboxError):
    """The container exists but is stopped (or stopping); start it and try again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)


class FileTooLarge(SandboxError):
    """A file (or upload) is over the byte limit it was read (or written) with."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message, permanent=True)
        self.size = size
        self.limit = limit


class SandboxNotFound(SandboxError):
    """The container (or volume) the handle names does not exist (any more)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandbox; already clamped to the site's ceilings."""

    memory_mb: int = 1024
    cpus: float = 1.0
    pids_limit: int = 256
    tmp_mb: int = 256
    nofile: int = 4096
    fsize_mb: int = 1024
    runtime: str = ""  # "" = the engine's default runtime; e.g. "runsc" for gVisor
    disk_mb: int = 0  # workspace size limit; 0 = none (a plain volume)

    def as_dict(self) -> dict[str, object]:
        return {
            "memory_mb": self.memory_mb,
            "cpus": self.cpus,
            "pids_limit": self.pids_limit,
            "tmp_mb": self.tmp_mb,
            "nofile": self.nofile,
            "fsize_mb": self.fsize_mb,
            "runtime": self.runtime,
            "disk_mb": self.disk_mb,
        }


@dataclass(frozen=True)
class SandboxSpec:
    """What to create: image, limits and the labels that tie the container to its owner.

    ``labels`` holds the owner ids (team, project, session) or, for a warm-pool member, the
    pool profile; the backend adds the app label and the creation time itself.
    """

    image: str
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    labels: dict[str, str] = field(default_factory=dict)
    name: str = ""  # container name; "" lets the backend choose a unique one
    volume: str = ""  # workspace volume to (re)use; "" makes a new one named after the container


@dataclass(frozen=True)
class SandboxHandle:
    """How to find a sandbox again: container id and workspace volume name."""

    container_id: str
    volume: str


# Terminal bounds (the runner enforces the same): size, and bytes per write.
MAX_PTY_ROWS = 500
MAX_PTY_COLS = 1000
MAX_PTY_INPUT = 64 * 1024


@dataclass
class Pty:
    """An open terminal in a sandbox: a login shell on a PTY, as the sandbox user, with the
    session's persisted cwd/env. ``channel`` is the backend's own connection state; the PTY
    lives as long as it does. One reader at a time (``read_pty``); writes, resizes and the
    close may come from another thread."""

    terminal_id: str
    handle: SandboxHandle
    pgid: int
    channel: object = field(repr=False, default=None)


@dataclass(frozen=True)
class PtyOutput:
    """What ``read_pty`` got: bytes the terminal echoed, or (``closed``) the shell's end
    with its exit code (None when unknown)."""

    data: bytes = b""
    closed: bool = False
    exit_code: int | None = None


@dataclass(frozen=True)
class ExecResult:
    """How a command ended. ``exit_code`` is None when the engine could not tell.

    ``command_id`` and ``source`` say who reported it: "runner" (the in-sandbox runner,
    over frames the host validated), or "exec" (the engine's exit code of a one-off exec).
    ``leftover_processes`` counts the command's processes still running when its shell
    exited (they may outlive the cell); ``env_refused`` / ``env_dropped`` name the exported
    variables that were not persisted for later commands (loader/startup variables refused,
    the excess past the environment's bounds dropped).
    """

    outcome: Outcome
    exit_code: int | None
    duration_s: float
    command_id: str = ""
    source: Literal["runner", "exec", ""] = ""
    leftover_processes: int = 0
    env_refused: tuple[str, ...] = ()
    env_dropped: int = 0


@dataclass(frozen=True)
class LeftoverProcess:
    """A process still running after the command that started it ended."""

    pid: int
    command_id: str
    command_line: str


@dataclass(frozen=True)
class SandboxStats:
    cpu_percent: float
    memory_bytes: int
    memory_limit_bytes: int
    pids: int


@dataclass(frozen=True)
class FileEntry:
    """One directory entry, path relative to /workspace."""

    path: str
    name: str
    kind: Literal["file", "dir", "symlink", "other"]
    size: int
    mtime: dt.datetime


@dataclass
class FileStream:
    """A regular file being read out of a sandbox: its size, then its content in chunks of
    bounded size (never the whole file at once). ``close()`` lets go of the engine
    connection when the reader stops early; exhausting ``chunks`` does so too."""

    size: int
    chunks: Iterator[bytes]
    close: Callable[[], None]


@dataclass(frozen=True)
class DirListing:
    """A directory's entries, at most a backend's cap of them; ``truncated`` when the
    directory held more (which of them are shown is then arbitrary)."""

    entries: list[FileEntry]
    truncated: bool = False

    def __iter__(self) -> Iterator[FileEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> FileEntry:
        return self.entries[index]


@dataclass(frozen=True)
class SandboxListing:
    """A container the backend found by its app label (for reconcile)."""

    container_id: str
    name: str
    labels: dict[str, str]
    running: bool
    created: dt.datetime
    volume: str


@dataclass(frozen=True)
class IgnorePattern:
    """A path pattern left out of workspace scans (``.gitignore``-like): ``pattern`` is a
    shell glob matched against each entry's name, or with ``anchored`` against its whole
    path relative to /workspace (``*`` then crosses ``/``); ``dir_only`` matches only
    directories. A matched directory is skipped with everything under it."""

    pattern: str
    anchored: bool = False
    dir_only: bool = False


class ScannedEntry(NamedTuple):
    """One entry of a workspace scan, as the sandbox reported it (untrusted: callers bound
    and validate it). ``path`` is relative to /workspace; ``stat`` is an opaque string of
    the entry's size, times, inode and mode: equal strings mean an unchanged entry;
    ``target`` is a symlink's target. (A tuple: scans have many thousands.)"""

    path: str
    kind: str  # "file" | "dir" | "symlink"
    mode: int
    size: int
    stat: str
    target: str = ""


@dataclass
class WorkspaceScan:
    """Every file, directory and symlink under /workspace except the ignored ones, in no
    particular order. ``skipped`` names entries that cannot be kept (sockets, devices,
    names that are not UTF-8), at most a few; ``skipped_count`` counts all of them.
    ``truncated``: the workspace held more than the scan's bounds. ``clock`` is the
    sandbox's time when the scan began (pass it as the next scan's ``changed_since``);
    ``archive``, when the scan was asked for changed files, a tar of the regular files
    changed since then (read it with ``read_archive_files``; the caller closes it)."""

    entries: list[ScannedEntry]
    skipped: list[str] = field(default_factory=list)
    skipped_count: int = 0
    truncated: bool = False
    clock: str = ""
    archive: IO[bytes] | None = None


def read_archive_files(
    archive: IO[bytes], wanted: set[str], *, max_file_bytes: int,
    on_file: Callable[[str, int, IO[bytes]], None],
) -> None:
    """Call ``on_file(path, size, content)`` for each regular file of a tar made in a
    sandbox (untrusted) whose path (relative to /workspace, "./" prefix allowed) is in
    ``wanted``, each at most once; other members are skipped. FileTooLarge for a wanted
    file over ``max_file_bytes``, SandboxError for a damaged archive. ``wanted`` loses
    the paths delivered."""
    try:
        with tarfile.open(fileobj=archive, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name not in wanted or not member.isreg():
                    continue
                if member.size > max_file_bytes:
                    raise FileTooLarge(f"/workspace/{name} is {member.size} bytes",
                                       size=member.size, limit=max_file_bytes)
                content = tar.extractfile(member)
                if content is not None:
                    on_file(name, member.size, content)
                    wanted.discard(name)
    except tarfile.TarError as exc:
        raise SandboxError(f"reading workspace files failed: {exc}", permanent=False) from exc


class SandboxBackend(abc.ABC):
    """A container engine seen as a set of sandboxes.

    Every method raises ``SandboxError`` (``SandboxNotFound`` for a handle that names
    nothing) and nothing else for engine trouble; the ``permanent`` flag says whether a
    retry may help.
    """

    @abc.abstractmethod
    def create(self, spec: SandboxSpec) -> SandboxHandle:
        """Create and start a new sandbox with a new workspace volume."""

    @abc.abstractmethod
    def start(self, handle: SandboxHandle) -> None:
        """Start a stopped sandbox (no-op when running). Raises SandboxNotFound if gone."""

    @abc.abstractmethod
    def is_running(self, handle: SandboxHandle) -> bool:
        """True if the container exists and runs. Raises SandboxNotFound if gone."""

    @abc.abstractmethod
    def exec(
        self,
        handle: SandboxHandle,
        command: str,
        *,
        command_id: str,
        timeout_s: float,
        on_output: OutputCallback,
    ) -> ExecResult:
        """Run ``command`` with bash in the sandbox and wait for it.

        Output is passed to ``on_output(stream, data)`` as it arrives, in order per stream,
        as raw bytes (decode with ``agentide.lib.output``). The working directory and
        exported environment carry over from the previous command. The command runs in its
        own process group with stdin from /dev/null; on timeout or cancel the whole group,
        including children that left it, is killed. ``command_id`` (``[A-Za-z0-9_.:-]``,
        at most 100 characters) names the command for ``cancel``.
        """

    @abc.abstractmethod
    def cancel(self, handle: SandboxHandle, command_id: str) -> bool:
        """Kill a running command and all its processes, from any process or host.

        Returns True if something was killed. The ``exec`` waiting for it returns outcome
        ``cancelled``.
        """

    @abc.abstractmethod
    def stop(self, handle: SandboxHandle) -> None:
        """Stop the container and keep the workspace volume. No-op if already stopped."""

    @abc.abstractmethod
    def destroy(self, handle: SandboxHandle) -> None:
        """Remove the container and its workspace volume. No-op for what is already gone."""

    @abc.abstractmethod
    def stats(self, handle: SandboxHandle) -> SandboxStats:
        """Current CPU, memory and process count of a running sandbox."""

    @abc.abstractmethod
    def list_dir(
        self,
        handle: SandboxHandle,
        path: str = "",
        *,
        max_entries: int = MAX_LIST_ENTRIES,
        max_bytes: int = MAX_LIST_BYTES,
    ) -> DirListing:
        """Entries of a directory under /workspace (``path`` relative to it): at most
        ``max_entries``, read from at most ``max_bytes`` of listing output."""

    @abc.abstractmethod
    def open_file(self, handle: SandboxHandle, path: str, *, max_bytes: int) -> FileStream:
        """Stream a regular file under /workspace, from a running or a stopped sandbox
        (never starting it). Raises FileTooLarge for files over ``max_bytes``."""

    def read_file(self, handle: SandboxHandle, path: str, *, max_bytes: int) -> bytes:
        """Content of a regular file under /workspace; refuses files over ``max_bytes``."""
        stream = self.open_file(handle, path, max_bytes=max_bytes)
        try:
            return b"".join(stream.chunks)
        finally:
            stream.close()

    @abc.abstractmethod
    def write_file(
        self, handle: SandboxHandle, path: str, data: bytes | BinaryIO, *, max_bytes: int
    ) -> None:
        """Create or replace a regular file under /workspace (parents must exist) from bytes
        or a seekable binary file (read in chunks). Raises FileTooLarge over ``max_bytes``."""

    @abc.abstractmethod
    def list_sandboxes(self) -> list[SandboxListing]:
        """Every container carrying this app's label, running or not."""

    @abc.abstractmethod
    def list_volumes(self) -> dict[str, dict[str, str]]:
        """Every workspace volume carrying this app's label: name -> labels."""

    @abc.abstractmethod
    def remove_volume(self, name: str) -> None:
        """Remove a labelled workspace volume; no-op if gone."""

    def leftover_processes(self, handle: SandboxHandle) -> list[LeftoverProcess]:
        """Processes of finished commands still running in the sandbox (at most 50), each
        with the id of its command; ``cancel(handle, command_id)`` kills them. Backends
        that cannot tell return []."""
        return []

    # -- terminals ------------------------------------------------------------------------
    # Optional: backends without terminals raise a permanent SandboxError.

    def open_pty(self, handle: SandboxHandle, terminal_id: str, *, rows: int,
                 cols: int) -> Pty:
        """Start a terminal (``bash -l`` on a PTY of rows x cols, in its own process group,
        with the session's persisted cwd/env under the same refusal rules as commands).
        Raises SandboxError (permanent for a bad id or size)."""
        raise SandboxError("This sandbox backend has no terminals.", permanent=True)

    def read_pty(self, pty: Pty, timeout_s: float) -> PtyOutput | None:
        """The next output of the terminal, its close, or None after ``timeout_s``.
        Raises SandboxError when the connection to the terminal is lost (it is gone)."""
        raise SandboxError("This sandbox backend has no terminals.", permanent=True)

    def write_pty(self, pty: Pty, data: bytes) -> None:
        """Type ``data`` (at most MAX_PTY_INPUT bytes) into the terminal."""
        raise SandboxError("This sandbox backend has no terminals.", permanent=True)

    def resize_pty(self, pty: Pty, rows: int, cols: int) -> None:
        """Set the terminal's size (1..MAX_PTY_ROWS x 1..MAX_PTY_COLS); its programs get
        SIGWINCH."""
        raise SandboxError("This sandbox backend has no terminals.", permanent=True)

    def close_pty(self, pty: Pty) -> None:
        """End the terminal: its shell and every process it started are killed. Safe to
        call twice; a later ``read_pty`` reports it closed."""
        raise SandboxError("This sandbox backend has no terminals.", permanent=True)

    # -- workspace checkpoints -------------------------------------------------------------
    # Optional: backends without them raise a permanent SandboxError.

    def scan_workspace(
        self, handle: SandboxHandle, *, ignore: list[IgnorePattern], max_entries: int,
        max_bytes: int, changed_since: str = "", max_changed_bytes: int = 0,
    ) -> WorkspaceScan:
        """Every entry under /workspace of a running sandbox (not following symlinks), but
        those ``ignore`` matches: at most ``max_entries``, from at most ``max_bytes`` of
        listing output (``truncated`` past either). With ``changed_since`` (an earlier
        scan's ``clock``) the same round trip brings back the regular files changed since
        then, up to ``max_changed_bytes`` (``archive``; a hint only: the caller reads
        what it misses with ``read_workspace_files``)."""
        raise SandboxError("This sandbox backend cannot scan workspaces.", permanent=True)

    def read_workspace_files(
        self, handle: SandboxHandle, paths: list[str], *, max_file_bytes: int,
        max_total_bytes: int, on_file: Callable[[str, int, IO[bytes]], None],
    ) -> None:
        """Read regular files under /workspace of a running sandbox, as the sandbox user,
        calling ``on_file(path, size, content)`` for each one read, in any order. Paths
        that are gone or no longer regular files are left out; a file over
        ``max_file_bytes`` or a read over ``max_total_bytes`` raises FileTooLarge."""
        raise SandboxError("This sandbox backend cannot read workspaces.", permanent=True)

    def remove_workspace_paths(self, handle: SandboxHandle, paths: list[str]) -> None:
        """Remove entries under /workspace of a running sandbox (a directory with all it
        holds) as the sandbox user, never following a symlink."""
        raise SandboxError("This sandbox backend cannot write workspaces.", permanent=True)

    def put_workspace_archive(self, handle: SandboxHandle, archive: Iterable[bytes]) -> None:
        """Unpack a tar archive (built by the caller, members relative to /workspace; sent
        as it is produced) into /workspace; replaces what its members name."""
        raise SandboxError("This sandbox backend cannot write workspaces.", permanent=True)

    def grow_workspace(self, volume: str, disk_mb: int) -> None:  # noqa: B027 - optional
        """Raise a size-limited workspace's limit to ``disk_mb`` (never shrinks) while its
        sandbox is stopped. No-op for backends or workspaces without a size limit."""

    def copy_workspace(
        self, source_volume: str, target_volume: str, *, image: str, limits: SandboxLimits
    ) -> None:
        """Copy every file of one workspace volume into another (modes and times kept),
        with a short-lived helper container of ``image`` under the same ``limits``, runtime
        and hardening as a sandbox. Used to fork a session. Backends that cannot do this
        raise a permanent SandboxError."""
        raise SandboxError("This sandbox backend cannot copy workspaces.", permanent=True)
