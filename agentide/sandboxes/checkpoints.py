"""Workspace checkpoints: the files of a session's /workspace, kept host-side.

A checkpoint is a manifest — every file, directory and symlink under /workspace (ignored
paths left out) with its kind, mode, size, symlink target, the sha256 of a file's content
and the stat facts it was read with — and a ``Checkpoint`` row naming it. File contents are
blobs, stored once per sha256 whichever session or checkpoint they belong to, so unchanged
files cost nothing; a manifest is one tree per directory (as in git), so an unchanged
directory costs nothing either.

The store (``AGENTIDE_CHECKPOINT_DIR``) holds ``blobs/<2 hex>/<62 hex>`` (a file's bytes,
named by their sha256) and ``trees/<2 hex>/<62 hex>`` (a directory's tree, zlib-compressed
JSON named by the sha256 of the JSON). Hashes are made here, from the bytes read; nothing
the sandbox says about content is believed.

Taking a checkpoint costs one round trip into the sandbox (``scan_workspace``: name, kind,
mode, size, times and inode of every entry, plus a tar of the files whose ctime is past the
previous scan's clock); the files whose stat facts differ from the session's previous
checkpoint are kept from it, and any it missed are read in a second trip
(``read_workspace_files``). Both run as the sandbox's user, so a checkpoint never holds
anything the sandbox could not read itself. What the sandbox reports is bounded and
validated: paths relative to /workspace without ``.``/``..``/empty parts, every parent a
directory of the same scan, ignored paths dropped again here, counts and sizes capped.

Restore makes /workspace equal to a checkpoint: it takes a checkpoint of the current state
first (the undo point), removes what the checkpoint lacks or holds as another kind (as the
sandbox user, never following a symlink), then writes what differs as one tar built here
and streamed through the engine's archive API (owned by the sandbox user, no set-id bits).
Ignored paths are left alone both ways.

Tree format (version 1): ``{"v": 1, "entries": [[name, kind, mode, size, sha256, target,
stat], ...]}`` sorted by name; kind is "file", "dir" or "symlink"; sha256 names a file's
blob or a directory's tree ("" for symlinks); target is "" but for symlinks. A checkpoint's
``manifest`` names the tree of /workspace itself.

Bundle format (``export_bundle``/``import_bundle``), a tar stream:
``agentide-checkpoints/index.json`` first — ``{"version": 1, "checkpoints": [{"id",
"manifest", "reason", "phase", "cell_id", "cell_position", "created_at", "files", "bytes"}]}``
— then ``agentide-checkpoints/trees/<sha256>`` (as stored) and
``agentide-checkpoints/blobs/<sha256>`` for every tree and file they use. Import checks every
tree and blob against its name, every entry (names, kinds, sizes against the blobs), within
bounds, and creates nothing when one fails.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Sum
from django.utils import timezone

from agentide.projects.models import Project, parse_ignored_paths
from agentide.sandboxes import services
from agentide.sandboxes.backends.base import (
    IgnorePattern,
    SandboxError,
    SandboxHandle,
    SandboxNotFound,
    SandboxNotRunning,
    ScannedEntry,
    WorkspaceScan,
    read_archive_files,
)
from agentide.sandboxes.models import Checkpoint
from agentide.sandboxes.services import Admission, SessionRef

log = logging.getLogger(__name__)

# Bounds of one workspace as checkpoints see it.
MAX_ENTRIES = 100_000
MAX_SCAN_BYTES = 64 * 1024 * 1024
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_FILE_BYTES = 2 * 1024**3
# A session's checkpoints may store this many times its workspace's size limit.
STORAGE_FACTOR = 2
# The runner's shell state: never the user's files, never checkpointed or restored.
ALWAYS_IGNORED = IgnorePattern(".agentide", anchored=True)
# Text diffs: files up to this size are compared as text (when they decode as UTF-8).
MAX_TEXT_DIFF_FILE = 1024 * 1024
# Unreferenced blobs younger than this are left to a later sweep (a checkpoint being
# taken may be about to name them).
SWEEP_GRACE_S = 3600
# Bundles: at most this many checkpoints and blob bytes are imported.
MAX_BUNDLE_CHECKPOINTS = 10_000
MAX_BUNDLE_BYTES = 16 * 1024**3
MANIFEST_VERSION = 1
BUNDLE_DIR = "agentide-checkpoints"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


class CheckpointError(Exception):
    """A checkpoint operation that cannot be done; ``message`` says why for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Entry(NamedTuple):
    """One manifest entry (see the module's manifest format)."""

    path: str
    kind: str
    mode: int
    size: int
    sha256: str
    target: str
    stat: str


@dataclass(frozen=True)
class CheckpointResult:
    """What ``take_checkpoint`` did: the checkpoint, or none and ``error`` saying why.
    ``skipped`` names entries that could not be kept (sockets, devices, bad names)."""

    checkpoint: Checkpoint | None
    error: str = ""
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.checkpoint is not None


# --- the store -------------------------------------------------------------------------------


def _root() -> Path:
    return Path(settings.AGENTIDE_CHECKPOINT_DIR)


def _blob_path(sha: str) -> Path:
    return _root() / "blobs" / sha[:2] / sha[2:]


def has_blob(sha: str) -> bool:
    return _blob_path(sha).is_file()


@contextlib.contextmanager
def _store_lock(exclusive: bool = False) -> Iterator[None]:
    """Takers and importers hold the store shared; a sweep holds it alone, so it never
    removes a blob a checkpoint being made is about to name."""
    root = _root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _BlobWriter:
    """Writes one blob: bytes go to a temporary file while hashed, then into place under
    their sha256 unless that blob exists already. ``added`` = bytes newly stored."""

    def __init__(self) -> None:
        tmp = _root() / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp)
        self._file = os.fdopen(fd, "wb")
        self._name = name
        self._hash = hashlib.sha256()
        self.size = 0
        self.added = 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    def copy_from(self, source: IO[bytes], limit: int) -> None:
        while chunk := source.read(_CHUNK):
            self.write(chunk)
            if self.size > limit:
                self.abort()
                raise CheckpointError(f"a file is larger than {limit} bytes")

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> str:
        self._file.close()
        sha = self._hash.hexdigest()
        target = _blob_path(sha)
        if target.is_file():
            os.unlink(self._name)
            with contextlib.suppress(OSError):
                os.utime(target)  # recently used: a sweep's grace covers it
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._name, target)
            self.added = self.size
        return sha

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._name)


def open_blob(sha: str) -> BinaryIO:
    """The stored bytes of blob ``sha``; CheckpointError when the store lacks it."""
    if not _SHA_RE.match(sha):
        raise CheckpointError("not a blob name")
    try:
        return open(_blob_path(sha), "rb")
    except FileNotFoundError:
        raise CheckpointError(f"the checkpoint store has lost blob {sha[:12]}") from None


def read_blob(sha: str, *, max_bytes: int) -> bytes:
    with open_blob(sha) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CheckpointError(f"blob {sha[:12]} is larger than {max_bytes} bytes")
    return data


# --- manifests -------------------------------------------------------------------------------
# A manifest is a tree per directory, as in git: a directory whose entries did not change
# keeps its tree, so a checkpoint where one file changed stores that file and the trees on
# its path, and a diff skips every subtree both sides share.

# Trees read or written lately, by name, up to this many rows in all (~100 MB) per process.
_TREE_CACHE_ROWS = 400_000
_trees: dict[str, tuple[tuple[Any, ...], ...]] = {}
_cached_rows = 0


def _tree_path(sha: str) -> Path:
    return _root() / "trees" / sha[:2] / sha[2:]


def _put_tree(rows: list[list[Any]]) -> tuple[str, int]:
    """Store one directory's rows; returns the tree's name and the bytes newly stored."""
    data = json.dumps({"v": MANIFEST_VERSION, "entries": rows}, separators=(",", ":"),
                      ensure_ascii=False).encode()
    sha = hashlib.sha256(data).hexdigest()
    path = _tree_path(sha)
    if path.is_file():
        return sha, 0
    packed = zlib.compress(data, 6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=_tmp_dir())
    with os.fdopen(fd, "wb") as f:
        f.write(packed)
    os.replace(tmp, path)
    _remember(sha, tuple(tuple(r) for r in rows))
    return sha, len(packed)


def _remember(sha: str, rows: tuple[tuple[Any, ...], ...]) -> None:
    global _cached_rows
    if _cached_rows + len(rows) > _TREE_CACHE_ROWS:
        _trees.clear()
        _cached_rows = 0
    if sha not in _trees:
        _trees[sha] = rows
        _cached_rows += len(rows)


def _unpack_tree(sha: str, packed: bytes) -> tuple[tuple[Any, ...], ...]:
    """The rows of a stored tree, checked against its name and its shape."""
    try:
        inflater = zlib.decompressobj()
        data = inflater.decompress(packed, 256 * 1024 * 1024)
        if inflater.unconsumed_tail:
            raise CheckpointError(f"tree {sha[:12]} is too large")
        body = json.loads(data)
    except (zlib.error, ValueError):
        raise CheckpointError(f"tree {sha[:12]} is not a checkpoint tree") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise CheckpointError(f"tree {sha[:12]} does not match its name")
    rows = body.get("entries") if isinstance(body, dict) else None
    if body.get("v") != MANIFEST_VERSION or not isinstance(rows, list):
        raise CheckpointError(f"tree {sha[:12]} is of an unknown version")
    if len(rows) > MAX_ENTRIES or not all(isinstance(r, list) and len(r) == 7 for r in rows):
        raise CheckpointError(f"tree {sha[:12]} is malformed")
    return tuple(tuple(r) for r in rows)


def _load_tree(sha: str) -> tuple[tuple[Any, ...], ...]:
    rows = _trees.get(sha)
    if rows is None:
        try:
            packed = _tree_path(sha).read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"the checkpoint store has lost tree {sha[:12]}") from None
        rows = _unpack_tree(sha, packed)
        _remember(sha, rows)
    return rows


def _flatten(root: str, *, check: bool = False) -> tuple[Entry, ...]:
    """Every entry under tree ``root``, sorted by path; with ``check`` (trees that did not
    come from this store's own checkpoints) every entry is validated too."""
    out: list[Entry] = []
    stack = [("", root)]
    while stack:
        prefix, sha = stack.pop()
        for row in _load_tree(sha):
            if check and not (isinstance(row[0], str) and "/" not in row[0]):
                raise CheckpointError("a tree entry's name is invalid")
            entry = Entry(prefix + row[0], *row[1:])
            out.append(entry)
            if len(out) > MAX_ENTRIES:
                raise CheckpointError(f"a checkpoint holds more than {MAX_ENTRIES:,} entries")
            if entry.kind == "dir":
                stack.append((entry.path + "/", entry.sha256))
    out.sort(key=lambda e: e.path)
    if check:
        for entry in out:
            _check_entry(entry)
        _check_tree(out)
    return tuple(out)


def _store_trees(entries: list[Entry]) -> tuple[str, int]:
    """Store the trees of ``entries`` (every parent a directory among them, directories'
    sha256 ignored); returns the root tree's name and the bytes newly stored."""
    children: dict[str, list[Entry]] = {}
    for entry in entries:
        children.setdefault(entry.path.rpartition("/")[0], []).append(entry)
    tree_of: dict[str, str] = {}
    added = 0

    def rows(parent: str) -> list[list[Any]]:
        return [[e.path.rpartition("/")[2], e.kind, e.mode, e.size,
                 tree_of[e.path] if e.kind == "dir" else e.sha256, e.target, e.stat]
                for e in sorted(children.get(parent, ()), key=lambda e: e.path)]

    for path in sorted((e.path for e in entries if e.kind == "dir"),
                       key=lambda p: p.count("/"), reverse=True):
        tree_of[path], stored = _put_tree(rows(path))
        added += stored
    root, stored = _put_tree(rows(""))
    return root, added + stored


def _check_entry(entry: Entry) -> None:
    path, kind, mode, size, sha, target, stat = entry
    ok = (isinstance(path, str) and valid_path(path)
          and kind in ("file", "dir", "symlink")
          and isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode <= 0o7777
          and isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_FILE_BYTES
          and isinstance(sha, str) and (bool(_SHA_RE.match(sha)) if kind != "symlink"
                                        else sha == "")
          and isinstance(target, str) and len(target.encode()) <= MAX_PATH_BYTES
          and "\0" not in target and (kind == "symlink" or target == "")
          and isinstance(stat, str) and len(stat) <= 200)
    if not ok:
        raise CheckpointError(f"a checkpoint entry is invalid: {str(path)[:100]!r}")


def _check_tree(entries: list[Entry]) -> None:
    """Unique paths (sorted), and every parent a directory of the same manifest."""
    dirs = set()
    previous = None
    for entry in entries:
        if previous is not None and entry.path == previous:
            raise CheckpointError("a checkpoint names a path twice")
        previous = entry.path
        parent = entry.path.rpartition("/")[0]
        if parent and parent not in dirs:
            raise CheckpointError(f"{entry.path[:100]!r} has no parent directory")
        if entry.kind == "dir":
            dirs.add(entry.path)


@functools.lru_cache(maxsize=4)
def _manifest(root: str) -> tuple[Entry, ...]:
    # Trees never change once stored: cached per process by name (a few: a big workspace's
    # manifest holds up to MAX_ENTRIES entries).
    return _flatten(root)


def manifest_entries(checkpoint: Checkpoint) -> tuple[Entry, ...]:
    """Every entry of ``checkpoint``, sorted by path (a directory's ``sha256`` names its
    tree, a symlink's is "")."""
    return _manifest(checkpoint.manifest)


def valid_path(path: str) -> bool:
    """A path relative to /workspace as checkpoints accept it: not absolute, no empty,
    ``.`` or ``..`` parts, no NUL, bounded lengths (newlines and other characters are fine)."""
    if not path or "\0" in path or path.startswith("/"):
        return False
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return False
    for part in path.split("/"):
        if part in ("", ".", "..") or len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            return False
    return True


# --- ignored paths ---------------------------------------------------------------------------


def ignore_patterns(project: Project) -> list[IgnorePattern]:
    """The project's ignored paths (a broken list counts as empty) and the runner's state."""
    try:
        parsed = parse_ignored_paths(project.checkpoint_ignored_paths or "")
    except ValidationError:
        parsed = []
    return [*(IgnorePattern(*p) for p in parsed), ALWAYS_IGNORED]


def is_ignored(path: str, is_dir: bool, patterns: list[IgnorePattern]) -> bool:
    """True when ``path`` or one of its parent directories matches a pattern (the same
    rules the sandbox's scan applies, checked again here)."""
    parts = path.split("/")
    return any(_matches("/".join(parts[: i + 1]), part, is_dir or i < len(parts) - 1, patterns)
               for i, part in enumerate(parts))


def _matches(path: str, name: str, is_dir: bool, patterns: list[IgnorePattern]) -> bool:
    """True when a pattern matches this entry itself (not its parents)."""
    for rule in patterns:
        if rule.dir_only and not is_dir:
            continue
        if _glob(rule.pattern).match(path if rule.anchored else name):
            return True
    return False


@functools.lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    # find's -name/-path globs: * and ? match any character ("/" included for -path).
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z", re.DOTALL)
    except re.error:
        return re.compile(re.escape(pattern) + r"\Z")


# --- taking a checkpoint ---------------------------------------------------------------------


def _running_handle(session: SessionRef, admission: Admission) -> SandboxHandle:
    return services.ensure_sandbox(session, admission=admission).handle


def _with_sandbox(session: SessionRef, admission: Admission, work: Any) -> Any:
    """``work(handle)`` on the session's running sandbox, once more on a verified one when
    the row said running but the container was not."""
    handle = _running_handle(session, admission)
    try:
        return work(handle)
    except (SandboxNotRunning, SandboxNotFound):
        handle = services.ensure_sandbox(session, admission=admission, verify=True).handle
        return work(handle)


def _scan(handle: SandboxHandle, patterns: list[IgnorePattern], *, changed_since: str = "",
          max_changed_bytes: int = 0) -> tuple[list[ScannedEntry], list[str], WorkspaceScan]:
    """The validated scan of /workspace: entries sorted by path, names skipped, and the
    scan itself (its clock, and with ``changed_since`` the files changed since: the caller
    closes ``archive``)."""
    scan = services.get_backend().scan_workspace(
        handle, ignore=patterns, max_entries=MAX_ENTRIES, max_bytes=MAX_SCAN_BYTES,
        changed_since=changed_since, max_changed_bytes=max_changed_bytes)
    if scan.truncated:
        if scan.archive is not None:
            scan.archive.close()
        raise CheckpointError(
            f"/workspace holds more than {MAX_ENTRIES:,} files and directories (or names "
            "longer than the scan allows); add the bulky paths to the project's ignored "
            "paths to checkpoint the rest.")
    skipped = list(scan.skipped)
    by_path: dict[str, ScannedEntry] = {}
    for entry in scan.entries:
        if not valid_path(entry.path) or entry.path in by_path:
            skipped.append(entry.path[:200])
            continue
        if entry.size < 0 or entry.size > MAX_FILE_BYTES or len(entry.target) > MAX_PATH_BYTES:
            skipped.append(entry.path[:200])
            continue
        by_path[entry.path] = entry
    kept = []
    dirs: set[str] = set()
    for path in sorted(by_path):  # a parent sorts before what it holds
        entry = by_path[path]
        parent, _, name = path.rpartition("/")
        # A parent that is no directory kept from this scan (a lie, a race, or ignored):
        # not kept either.
        if parent and parent not in dirs:
            continue
        if _matches(path, name, entry.kind == "dir", patterns):
            continue
        kept.append(entry)
        if entry.kind == "dir":
            dirs.add(path)
    return kept, skipped[:20], scan


def storage_limit_bytes(session: SessionRef, admission: Admission) -> int:
    """How many bytes the session's checkpoints may store: STORAGE_FACTOR times its
    workspace's size limit."""
    disk_mb = services.limits_for(session.project, admission).disk_mb
    return STORAGE_FACTOR * max(disk_mb, 16) * 1024 * 1024


def checkpoint_bytes(session: SessionRef) -> int:
    """Bytes the session's checkpoints added to the store (its share of the storage)."""
    total = Checkpoint.objects.filter(session_id=session.pk).aggregate(n=Sum("added_bytes"))["n"]
    return int(total or 0)


def take_checkpoint(
    session: SessionRef,
    *,
    admission: Admission,
    reason: str,
    cell_id: int | None = None,
    phase: str = "",
) -> CheckpointResult:
    """Checkpoint the session's /workspace now (starting its sandbox under ``admission``
    if needed); ``cell_id``/``phase`` record which cell it was taken for.

    Never raises for the workspace's or the sandbox's trouble: checkpoints off for the
    project, a workspace past the bounds, storage over the session's limit, a sandbox that
    cannot start — the result then has no checkpoint and ``error`` says why; nothing in the
    workspace changes either way.
    """
    project = session.project
    if not project.checkpoints_enabled:
        return CheckpointResult(None, "Checkpoints are off for this project.")
    try:
        return _with_sandbox(session, admission, lambda handle: _take(
            session, handle, admission, reason=reason, cell_id=cell_id, phase=phase))
    except CheckpointError as exc:
        return CheckpointResult(None, exc.message)
    except SandboxError as exc:
        return CheckpointResult(None, f"The workspace could not be read: {exc.message}")
    except Exception as exc:
        # A refused start (quotas), the store's disk... the cell still runs.
        log.warning("checkpoint of session %s failed", session.pk, exc_info=True)
        return CheckpointResult(None, f"No checkpoint was taken: {getattr(exc, 'message', exc)}")


def _take(session: SessionRef, handle: SandboxHandle, admission: Admission, *, reason: str,
          cell_id: int | None, phase: str) -> CheckpointResult:
    patterns = ignore_patterns(session.project)
    previous = Checkpoint.objects.filter(session_id=session.pk).order_by("-id").first()
    known: dict[str, Entry] = {}
    if previous is not None:
        with contextlib.suppress(CheckpointError):
            known = {e.path: e for e in manifest_entries(previous)}
    limit = storage_limit_bytes(session, admission)
    used = checkpoint_bytes(session)
    # One round trip: the scan brings the files changed since the previous one along.
    since = previous.scan_clock if previous is not None and known else ""
    scanned, skipped, scan = _scan(handle, patterns, changed_since=since,
                                   max_changed_bytes=max(0, min(limit - used, 256 * 2**20)))
    try:
        return _store(session, handle, scanned, skipped, scan, known, limit, used,
                      reason=reason, cell_id=cell_id, phase=phase)
    finally:
        if scan.archive is not None:
            scan.archive.close()


def _store(session: SessionRef, handle: SandboxHandle, scanned: list[ScannedEntry],
           skipped: list[str], scan: WorkspaceScan, known: dict[str, Entry], limit: int,
           used: int, *, reason: str, cell_id: int | None, phase: str) -> CheckpointResult:
    entries: dict[str, Entry] = {}
    to_read: dict[str, ScannedEntry] = {}
    for item in scanned:
        if item.kind == "file":
            old = known.get(item.path)
            # Same size, times, inode and mode as when last read: the same content. (The
            # store keeps every blob a checkpoint names.)
            if old is not None and old.kind == "file" and old.stat == item.stat:
                entries[item.path] = old
            else:
                to_read[item.path] = item
        else:
            entries[item.path] = Entry(item.path, item.kind, item.mode, 0, "", item.target,
                                       item.stat)
    incoming = sum(e.size for e in to_read.values())
    if used + incoming > limit:
        raise CheckpointError(
            f"Checkpoint storage of this session is full ({used / 2**20:.0f} of "
            f"{limit / 2**20:.0f} MiB; this one needs {incoming / 2**20:.1f} MiB more). "
            "Nothing was lost: the workspace is as it was. Old checkpoints are removed by "
            "the project's retention.")
    added = 0
    with _store_lock():

        def on_file(path: str, size: int, content: IO[bytes]) -> None:
            nonlocal added
            item = to_read[path]
            writer = _BlobWriter()
            try:
                writer.copy_from(content, MAX_FILE_BYTES)
                sha = writer.commit()
            except BaseException:
                writer.abort()
                raise
            added += writer.added
            entries[path] = Entry(path, "file", item.mode, writer.size, sha, "", item.stat)

        wanted = set(to_read)
        if scan.archive is not None and wanted:
            # Cut at its cap, or damaged: what it lacks is read below.
            with contextlib.suppress(SandboxError):
                read_archive_files(scan.archive, wanted, max_file_bytes=MAX_FILE_BYTES,
                                   on_file=on_file)
        if wanted:
            services.get_backend().read_workspace_files(
                handle, sorted(wanted), max_file_bytes=MAX_FILE_BYTES,
                max_total_bytes=max(incoming * 2, incoming + 64 * 1024 * 1024),
                on_file=on_file)
        # A file gone between the scan and the read is not in this checkpoint.
        ordered = [entries[p] for p in sorted(entries)]
        root, trees_added = _store_trees(ordered)
        checkpoint = Checkpoint.objects.create(
            session_id=session.pk,
            cell_id=cell_id,
            phase=phase,
            reason=reason[:200],
            manifest=root,
            files=len(ordered),
            bytes=sum(e.size for e in ordered if e.kind == "file"),
            added_bytes=added + trees_added,
            scan_clock=scan.clock,
        )
    return CheckpointResult(checkpoint, "", skipped)


def checkpoint_for_cell(cell_id: int, phase: str) -> Checkpoint | None:
    """The checkpoint taken ``phase`` ("before" | "after") cell ``cell_id``, if any."""
    return Checkpoint.objects.filter(cell_id=cell_id, phase=phase).first()


def copy_cell_checkpoints(session: SessionRef, cell_ids: Mapping[int, int]) -> dict[int, int]:
    """Give ``session`` copies of the checkpoints of the cells ``cell_ids`` maps (old cell
    id -> the session's copy of it), naming the same stored files; returns old checkpoint
    id -> new. For forks."""
    rows = list(Checkpoint.objects.filter(cell_id__in=list(cell_ids)).order_by("id"))
    copies = Checkpoint.objects.bulk_create([
        Checkpoint(session_id=session.pk, cell_id=cell_ids[row.cell_id or 0], phase=row.phase,
                   reason=row.reason, manifest=row.manifest, files=row.files, bytes=row.bytes,
                   created_at=row.created_at)
        for row in rows
    ])
    return {old.pk: new.pk for old, new in zip(rows, copies, strict=True)}


def latest_checkpoint(session: SessionRef) -> Checkpoint | None:
    return Checkpoint.objects.filter(session_id=session.pk).order_by("-id").first()


# --- diffs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    """One path that differs between two checkpoints. Sizes and hashes are None on the
    side where the path does not exist; ``diff`` is a unified text diff ("" for binary
    files, directories and symlinks), ``note`` says when it was cut or left out."""

    path: str
    kind: str
    old_kind: str | None
    old_size: int | None
    new_size: int | None
    old_sha256: str | None
    new_sha256: str | None
    old_mode: int | None
    new_mode: int | None
    old_target: str = ""
    new_target: str = ""
    binary: bool = False
    diff: str = ""
    note: str = ""


@dataclass(frozen=True)
class WorkspaceDiff:
    added: list[FileChange]
    removed: list[FileChange]
    changed: list[FileChange]
    capped: bool = False  # some text diffs were cut or left out (the changes' own notes say)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    @property
    def count(self) -> int:
        return len(self.added) + len(self.removed) + len(self.changed)


def _text(sha: str | None, size: int | None) -> str | None:
    """A blob as text, or None when it is binary (NUL bytes or not UTF-8) or too large."""
    if not sha:
        return ""
    if size is None or size > MAX_TEXT_DIFF_FILE:
        return None
    try:
        data = read_blob(sha, max_bytes=MAX_TEXT_DIFF_FILE)
    except CheckpointError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _is_binary(sha: str, size: int) -> bool:
    if size > MAX_TEXT_DIFF_FILE:
        # Judged by its first 8 KiB: large text files still say "text, too large".
        try:
            with open_blob(sha) as f:
                head = f.read(8192)
        except CheckpointError:
            return True
        return b"\0" in head
    return _text(sha, size) is None


def _changed_pairs(old: str | None, new: str | None, prefix: str,
                   out: list[tuple[Entry | None, Entry | None]]) -> None:
    """(old entry, new entry) of every path under trees ``old`` and ``new`` (None: no
    tree) that differs in kind, mode, content or target; subtrees both share are skipped."""
    if old == new:
        return
    before = {row[0]: row for row in _load_tree(old)} if old else {}
    after = {row[0]: row for row in _load_tree(new)} if new else {}
    for name in before.keys() | after.keys():
        a_row, b_row = before.get(name), after.get(name)
        a = Entry(prefix + name, *a_row[1:]) if a_row else None
        b = Entry(prefix + name, *b_row[1:]) if b_row else None
        a_dir = a is not None and a.kind == "dir"
        b_dir = b is not None and b.kind == "dir"
        if a is None or b is None or a.kind != b.kind or a.mode != b.mode or (
                not a_dir and (a.sha256, a.target) != (b.sha256, b.target)):
            out.append((a, b))
        if a_dir or b_dir:
            _changed_pairs(a.sha256 if a_dir else None,  # type: ignore[union-attr]
                           b.sha256 if b_dir else None,  # type: ignore[union-attr]
                           prefix + name + "/", out)


def diff_checkpoints(
    old: Checkpoint | None, new: Checkpoint, *, max_text_bytes: int = 64 * 1024,
    max_total_text_bytes: int = 512 * 1024,
) -> WorkspaceDiff:
    """What changed from ``old`` (None: an empty workspace) to ``new``: added, removed and
    changed paths, sorted, with unified text diffs of text files of at most
    ``max_text_bytes`` each (``max_total_text_bytes`` in all; past that a note replaces
    the diff). Binary files are summed up by size and sha256."""
    added: list[FileChange] = []
    removed: list[FileChange] = []
    changed: list[FileChange] = []
    budget = max_total_text_bytes
    capped = False

    def change(a: Entry | None, b: Entry | None) -> FileChange:
        nonlocal budget, capped
        subject = b or a
        assert subject is not None
        kind = subject.kind
        binary = False
        text = note = ""
        if kind == "file" and (a is None or a.kind == "file") and (b is None or b.kind == "file"):
            old_sha = a.sha256 if a else None
            new_sha = b.sha256 if b else None
            if old_sha != new_sha:
                binary = any(_is_binary(e.sha256, e.size) for e in (a, b) if e is not None)
                if binary:
                    note = "binary file"
                elif budget <= 0:
                    note, capped = "diff left out: the diff of this change set is too long", True
                else:
                    left = _text(old_sha, a.size if a else 0)
                    right = _text(new_sha, b.size if b else 0)
                    if left is None or right is None:
                        note, capped = "text file too large to compare", True
                    else:
                        lines = difflib.unified_diff(
                            left.splitlines(keepends=True), right.splitlines(keepends=True),
                            fromfile=f"a/{subject.path}" if a else "/dev/null",
                            tofile=f"b/{subject.path}" if b else "/dev/null", n=3)
                        text = "".join(lines)
                        limit = min(max_text_bytes, budget)
                        if len(text) > limit:
                            text = text[:limit]
                            note, capped = f"diff cut at {limit:,} characters", True
                        budget -= len(text)
        return FileChange(
            path=subject.path, kind=kind, old_kind=a.kind if a else None,
            old_size=a.size if a else None, new_size=b.size if b else None,
            old_sha256=a.sha256 if a and a.kind == "file" else None,
            new_sha256=b.sha256 if b and b.kind == "file" else None,
            old_mode=a.mode if a else None, new_mode=b.mode if b else None,
            old_target=a.target if a else "", new_target=b.target if b else "",
            binary=binary, diff=text, note=note,
        )

    pairs: list[tuple[Entry | None, Entry | None]] = []
    _changed_pairs(old.manifest if old is not None else None, new.manifest, "", pairs)
    for a, b in sorted(pairs, key=lambda pair: (pair[1] or pair[0]).path):  # type: ignore[union-attr]
        if a is None:
            added.append(change(None, b))
        elif b is None:
            removed.append(change(a, None))
        else:
            changed.append(change(a, b))
    return WorkspaceDiff(added, removed, changed, capped)


# --- restore ---------------------------------------------------------------------------------


def _mtime(entry: Entry) -> float:
    try:
        return float(entry.stat.split(":")[1])
    except (IndexError, ValueError):
        return time.time()


def _differs(entry: Entry, mode: int, sha: str, target: str) -> bool:
    """Whether an entry of the same kind must be written again ("" sha: unknown content)."""
    if entry.kind == "file":
        return not sha or sha != entry.sha256 or mode != entry.mode
    if entry.kind == "symlink":
        return target != entry.target
    return mode != entry.mode


def _apply(handle: SandboxHandle, current: list[ScannedEntry] | tuple[Entry, ...],
           target: tuple[Entry, ...], patterns: list[IgnorePattern]) -> None:
    """Make /workspace hold ``target`` where it now holds ``current`` (both without ignored
    paths): remove what the target lacks or holds as another kind, write what differs."""
    have: dict[str, tuple[str, int, str, str]] = {}
    for item in current:
        if isinstance(item, Entry):
            have[item.path] = (item.kind, item.mode, item.sha256, item.target)
        else:
            have[item.path] = (item.kind, item.mode, "", item.target)
    # A checkpoint made under other ignore rules: what is ignored now stays untouched.
    wanted = {e.path: e for e in target if not is_ignored(e.path, e.kind == "dir", patterns)}
    remove = sorted(p for p, (kind, *_) in have.items()
                    if p not in wanted or wanted[p].kind != kind)
    # Only the topmost of nested removals.
    top: list[str] = []
    for path in remove:
        if not top or not path.startswith(top[-1] + "/"):
            top.append(path)
    removed = set(remove)
    write: set[str] = set()
    for path, entry in wanted.items():
        old = None if path in removed else have.get(path)
        if old is None or _differs(entry, *old[1:]):
            write.add(path)
    # Parents of what is written go into the archive too, so they are never made by the
    # engine (as root, with its own modes).
    for path in list(write):
        parent = path.rpartition("/")[0]
        while parent and parent not in write:
            write.add(parent)
            parent = parent.rpartition("/")[0]
    backend = services.get_backend()
    if top:
        backend.remove_workspace_paths(handle, top)
    if write:
        backend.put_workspace_archive(handle, _archive([wanted[p] for p in sorted(write)]))


def _archive(entries: list[Entry]) -> Iterator[bytes]:
    """A tar of ``entries`` (parents first) from the store, produced piece by piece: owned by
    the sandbox user, no set-id bits, symlinks as they were."""
    for entry in entries:
        info = tarfile.TarInfo(entry.path)
        info.uid = info.gid = 1000  # the sandbox user's, never root's
        info.uname = info.gname = "agent"
        info.mode = entry.mode & 0o1777
        info.mtime = _mtime(entry)
        if entry.kind == "dir":
            info.type = tarfile.DIRTYPE
        elif entry.kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = entry.target
            info.mode = 0o777
        else:
            info.size = entry.size
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if entry.kind != "file":
            continue
        with open_blob(entry.sha256) as blob:
            if os.fstat(blob.fileno()).st_size != entry.size:
                raise CheckpointError(f"the stored content of {entry.path[:100]!r} is damaged")
            while chunk := blob.read(_CHUNK):
                yield chunk
        yield b"\0" * (-entry.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _tmp_dir() -> Path:
    path = _root() / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def restore_checkpoint(
    session: SessionRef, checkpoint: Checkpoint, *, admission: Admission,
    cell_id: int | None = None,
) -> Checkpoint:
    """Make the session's /workspace byte for byte ``checkpoint`` (ignored paths left
    alone), after taking a checkpoint of its current state, which is returned: restoring
    that one undoes this. ``cell_id`` records that undo point as the "before" checkpoint
    of the restore's cell.

    Raises CheckpointError when the current state cannot be kept first (nothing is
    changed then) or the restore fails (the undo point is kept), SandboxError when the
    sandbox cannot start.
    """
    if checkpoint.session_id != session.pk:
        raise CheckpointError("That checkpoint belongs to another session.")
    target = manifest_entries(checkpoint)
    _check_blobs(target)
    undo = take_checkpoint(session, admission=admission, reason=f"before restore of "
                           f"checkpoint {checkpoint.pk}", cell_id=cell_id,
                           phase=Checkpoint.Phase.BEFORE if cell_id else "")
    if undo.checkpoint is None:
        raise CheckpointError(f"The current files could not be kept first, so nothing was "
                              f"restored: {undo.error}")
    current = manifest_entries(undo.checkpoint)
    patterns = ignore_patterns(session.project)
    try:
        _with_sandbox(session, admission, lambda handle: _apply(handle, current, target,
                                                                patterns))
    except (SandboxError, CheckpointError) as exc:
        raise CheckpointError(
            f"The restore failed part way ({exc.message}); checkpoint {undo.checkpoint.pk} "
            "holds the files as they were before it.") from exc
    return undo.checkpoint


def _check_blobs(entries: Iterable[Entry], *, sizes: bool = False) -> None:
    """CheckpointError unless the store holds every file's content (of its recorded size,
    with ``sizes``: for checkpoints that came from elsewhere)."""

    def held(entry: Entry) -> bool:
        try:
            return not sizes or _blob_path(entry.sha256).stat().st_size == entry.size
        except FileNotFoundError:
            return False

    missing = [e.path for e in entries if e.kind == "file" and (not has_blob(e.sha256)
                                                                or not held(e))]
    if missing:
        raise CheckpointError(f"The checkpoint store lacks the content of {len(missing)} "
                              f"file(s) of that checkpoint, e.g. {missing[0][:100]!r}; nothing "
                              "was changed.")


def populate_from_checkpoint(
    session: SessionRef, checkpoint: Checkpoint, *, admission: Admission
) -> None:
    """Give a (new) session's /workspace the files of ``checkpoint`` — of any session:
    forks and imports start from another session's checkpoint. What the workspace held
    outside ignored paths is replaced; no undo point is taken. Raises CheckpointError or
    SandboxError."""
    target = manifest_entries(checkpoint)
    _check_blobs(target)
    patterns = ignore_patterns(session.project)

    def work(handle: SandboxHandle) -> None:
        current, _, _ = _scan(handle, patterns)
        _apply(handle, current, target, patterns)

    _with_sandbox(session, admission, work)


# --- retention -------------------------------------------------------------------------------


def pin_checkpoint(checkpoint: Checkpoint) -> None:
    """Keep ``checkpoint`` whatever retention says (a fork starts from it, a comment
    points at it)."""
    Checkpoint.objects.filter(pk=checkpoint.pk).update(pinned=True)
    checkpoint.pinned = True


def prune_checkpoints(target: Project | SessionRef, *, now: dt.datetime | None = None,
                      sweep: bool = True) -> int:
    """Remove the checkpoints of a project's sessions (or of one session) that retention
    lets go: beyond the project's last ``checkpoint_keep_last`` of each session *and*
    older than ``checkpoint_keep_days``, and not pinned. Then the blobs nothing names any
    more go. Returns how many checkpoints were removed."""
    now = now or timezone.now()
    if isinstance(target, Project):
        project = target
        rows = Checkpoint.objects.filter(session__project=project)
    else:
        project = target.project
        rows = Checkpoint.objects.filter(session_id=target.pk)
    cutoff = now - dt.timedelta(days=project.checkpoint_keep_days)
    doomed: list[int] = []
    for session_id in rows.values_list("session_id", flat=True).distinct():
        kept = list(Checkpoint.objects.filter(session_id=session_id).order_by("-id")
                    .values_list("pk", flat=True)[: project.checkpoint_keep_last])
        doomed += list(Checkpoint.objects.filter(session_id=session_id, pinned=False,
                                                 created_at__lt=cutoff)
                       .exclude(pk__in=kept).values_list("pk", flat=True))
    if doomed:
        Checkpoint.objects.filter(pk__in=doomed).delete()
        if sweep:
            sweep_blobs()
    return len(doomed)


def prune_all_checkpoints(*, now: dt.datetime | None = None) -> int:
    """Retention for every project with checkpoints (the hourly beat job), then one sweep
    of what nothing names any more; returns how many checkpoints were removed."""
    removed = 0
    projects = Project.objects.filter(
        pk__in=Checkpoint.objects.values("session__project_id").distinct())
    for project in projects.iterator():
        removed += prune_checkpoints(project, now=now, sweep=False)
    sweep_blobs()
    return removed


def _reachable(roots: Iterable[str]) -> tuple[set[str], set[str]]:
    """The trees and file blobs the given root trees name (each shared subtree once)."""
    trees: set[str] = set()
    blobs: set[str] = set()
    stack = list(roots)
    while stack:
        sha = stack.pop()
        if sha in trees:
            continue
        trees.add(sha)
        try:
            rows = _load_tree(sha)
        except CheckpointError:
            log.warning("checkpoint tree %s is unreadable", sha[:12])
            continue
        for row in rows:
            if row[1] == "dir":
                stack.append(row[4])
            elif row[1] == "file":
                blobs.add(row[4])
    return trees, blobs


def sweep_blobs(*, grace_s: float = SWEEP_GRACE_S) -> int:
    """Remove the stored trees and blobs no checkpoint names, once older than ``grace_s``
    (a checkpoint being taken may be about to name a new one); returns how many went."""
    removed = 0
    with _store_lock(exclusive=True):
        roots = Checkpoint.objects.values_list("manifest", flat=True).distinct()
        trees, blobs = _reachable(roots.iterator())
        deadline = time.time() - grace_s
        for kind, keep in (("trees", trees), ("blobs", blobs)):
            base = _root() / kind
            for folder in base.iterdir() if base.is_dir() else ():
                for item in folder.iterdir():
                    if folder.name + item.name in keep:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        if item.stat().st_mtime < deadline:
                            item.unlink()
                            _trees.pop(folder.name + item.name, None)
                            removed += 1
    return removed


# --- bundles ---------------------------------------------------------------------------------


class _Chunks(io.RawIOBase):
    """A write-only file whose bytes are taken out in pieces (a tar written as a stream)."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.pending.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.pending = b"".join(self.pending), []
        return data


def export_bundle(checkpoints: Iterable[Checkpoint]) -> Iterator[bytes]:
    """The checkpoints as a bundle (see the module's bundle format), in pieces."""
    rows = list(checkpoints)
    index = {"version": MANIFEST_VERSION, "checkpoints": [{
        "id": c.pk, "manifest": c.manifest, "reason": c.reason, "phase": c.phase,
        "cell_id": c.cell_id, "cell_position": c.cell.position if c.cell_id and c.cell else None,
        "created_at": c.created_at.isoformat(), "files": c.files, "bytes": c.bytes,
    } for c in rows]}
    out = _Chunks()
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
    body = json.dumps(index).encode()
    info = tarfile.TarInfo(f"{BUNDLE_DIR}/index.json")
    info.size = len(body)
    tar.addfile(info, io.BytesIO(body))
    yield out.take()
    trees, blobs = _reachable(c.manifest for c in rows)
    for kind, names, path in (("trees", trees, _tree_path), ("blobs", blobs, _blob_path)):
        for sha in sorted(names):
            with open(path(sha), "rb") as stored:
                info = tarfile.TarInfo(f"{BUNDLE_DIR}/{kind}/{sha}")
                info.size = os.fstat(stored.fileno()).st_size
                tar.addfile(info, stored)
            yield out.take()
    tar.close()
    yield out.take()


class _StreamReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def import_bundle(
    session: SessionRef, stream: IO[bytes] | Iterable[bytes], *,
    cell_ids: Mapping[int, int] | None = None, max_bytes: int = MAX_BUNDLE_BYTES,
) -> dict[int, Checkpoint]:
    """Store a bundle's checkpoints as checkpoints of ``session``; returns them by their
    id in the bundle. ``cell_ids`` maps the bundle's cell ids to the session's (a
    checkpoint of an unmapped cell is kept without its cell). Every blob is checked
    against its name, every manifest entry validated and every file's blob required;
    CheckpointError (nothing created) for a bundle that fails, or is past the bounds
    (``max_bytes`` of trees and blobs, at most ``MAX_BUNDLE_BYTES``)."""
    max_bytes = min(max_bytes, MAX_BUNDLE_BYTES)
    fileobj: Any = (stream if hasattr(stream, "read")
                    else io.BufferedReader(_StreamReader(iter(stream))))
    cell_ids = cell_ids or {}
    index: list[dict[str, Any]] | None = None
    total = 0
    stored = 0  # bytes the store did not hold yet: the session's share
    try:
        with _store_lock(), tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for member in tar:
                if member.name == f"{BUNDLE_DIR}/index.json" and index is None:
                    if not member.isreg() or member.size > 64 * 1024 * 1024:
                        raise CheckpointError("the bundle's index is malformed or too large")
                    content = tar.extractfile(member)
                    assert content is not None
                    index = _read_index(content.read())
                    continue
                kind, _, sha = member.name.removeprefix(f"{BUNDLE_DIR}/").partition("/")
                if (index is None or kind not in ("trees", "blobs") or not _SHA_RE.match(sha)
                        or not member.isreg()):
                    raise CheckpointError(f"unexpected bundle member {member.name[:100]!r}")
                total += member.size
                if total > max_bytes:
                    raise CheckpointError(
                        f"the bundle is larger than the {max_bytes / 2**20:g} MiB this "
                        "import may store")
                content = tar.extractfile(member)
                assert content is not None
                if kind == "trees":
                    if member.size > 64 * 1024 * 1024:
                        raise CheckpointError("a bundle tree is too large")
                    stored += _import_tree(sha, content.read())
                    continue
                writer = _BlobWriter()
                try:
                    writer.copy_from(content, MAX_FILE_BYTES)
                    if writer.sha256() != sha:
                        raise CheckpointError(f"bundle blob {sha[:12]} does not match its name")
                    writer.commit()
                    stored += writer.added
                except BaseException:
                    writer.abort()
                    raise
            if index is None:
                raise CheckpointError("the bundle has no index")
            rows = []
            for item in index:
                entries = _flatten(item["manifest"], check=True)
                _check_blobs(entries, sizes=True)
                old_cell = item.get("cell_id")
                rows.append((item["id"], Checkpoint(
                    session_id=session.pk,
                    cell_id=cell_ids.get(old_cell) if isinstance(old_cell, int) else None,
                    phase=item["phase"] if item.get("phase") in Checkpoint.Phase.values else "",
                    reason=str(item.get("reason", ""))[:200],
                    manifest=item["manifest"],
                    files=len(entries),
                    bytes=sum(e.size for e in entries if e.kind == "file"),
                )))
            for _, row in rows:
                if row.cell_id is None:
                    row.phase = ""
            if rows:
                rows[0][1].added_bytes = stored
            created = Checkpoint.objects.bulk_create([row for _, row in rows])
    except tarfile.TarError as exc:
        raise CheckpointError(f"not a checkpoint bundle: {exc}") from None
    return {old: row for (old, _), row in zip(rows, created, strict=True)}


def _import_tree(sha: str, packed: bytes) -> int:
    """Store a bundle's tree (checked against its name and shape); the bytes added."""
    rows = _unpack_tree(sha, packed)
    path = _tree_path(sha)
    added = 0
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=_tmp_dir())
        with os.fdopen(fd, "wb") as f:
            f.write(packed)
        os.replace(tmp, path)
        added = len(packed)
    _remember(sha, rows)
    return added


def _read_index(data: bytes) -> list[dict[str, Any]]:
    try:
        body = json.loads(data)
    except ValueError:
        raise CheckpointError("the bundle's index is not JSON") from None
    items = body.get("checkpoints") if isinstance(body, dict) else None
    if body.get("version") != MANIFEST_VERSION or not isinstance(items, list):
        raise CheckpointError("the bundle's index is of an unknown version")
    if len(items) > MAX_BUNDLE_CHECKPOINTS:
        raise CheckpointError("the bundle holds too many checkpoints")
    seen = set()
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("id"), int)
                and isinstance(item.get("manifest"), str) and _SHA_RE.match(item["manifest"])
                and item["id"] not in seen):
            raise CheckpointError("the bundle's index has a malformed checkpoint")
        seen.add(item["id"])
    return items

