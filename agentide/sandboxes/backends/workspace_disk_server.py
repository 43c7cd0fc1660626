"""The workspace disk service: makes, mounts, grows and releases size-limited workspaces
(``workspace_disk.WorkspaceDisk``) for workers that cannot mount (compose: they are not root
on the engine's host and reach the engine through a socket proxy).

It runs privileged (``manage.py serve_workspace_disks``) and listens on a unix socket. The
protocol is one JSON object per line each way, one connection per request or several:

    {"op": "ensure", "site": S, "volume": V, "size_mb": N or null}  -> {"ok": true, "mountpoint": P}
    {"op": "grow", "site": S, "volume": V, "size_mb": N}            -> {"ok": true}
    {"op": "release", "site": S, "volume": V}                       -> {"ok": true}
    {"op": "status", "site": S, "volume": V}                        -> {"ok": true, "exists": B}
    {"op": "list", "site": S}                 -> {"ok": true, "volumes": {name: mtime}}

and ``{"ok": false, "error": "...", "permanent": B}`` for anything refused or failed. Every
request is treated as hostile: a line is at most ``MAX_LINE_BYTES``, the fields are exactly
those of the op, names are single path components (``workspace_disk.NAME_RE``), sizes are
integers between ``MIN_SIZE_MB`` and the site maximum, and paths only ever come from the
service's own setting (``AGENTIDE_SANDBOX_WORKSPACE_DIR``).
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import stat
from pathlib import Path
from typing import Any

from agentide.sandboxes.backends.base import SandboxError
from agentide.sandboxes.backends.workspace_disk import (
    MAX_LINE_BYTES,
    MIN_SIZE_MB,
    NAME_RE,
    LocalDisks,
)

logger = logging.getLogger(__name__)

# A connection that sends nothing for this long is closed (it holds a thread).
IDLE_TIMEOUT_S = 60.0

_FIELDS = {
    "ensure": {"site", "volume", "size_mb"},
    "grow": {"site", "volume", "size_mb"},
    "release": {"site", "volume"},
    "status": {"site", "volume"},
    "list": {"site"},
}


class Refused(Exception):
    """A request the service does not do (bad form); said to the client, never raised on."""


def _name(request: dict[str, Any], field: str) -> str:
    value = request[field]
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise Refused(f"{field} must be a name of letters, digits, '_', '.' or '-'")
    return value


def _size(request: dict[str, Any], max_mb: int, *, optional: bool) -> int | None:
    value = request["size_mb"]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused("size_mb must be an integer")
    if not MIN_SIZE_MB <= value <= max_mb:
        raise Refused(f"size_mb must be between {MIN_SIZE_MB} and {max_mb}")
    return value


class WorkspaceDiskService:
    """Answers protocol lines with the workspace disks under ``root``."""

    def __init__(self, root: str | Path, max_mb: int) -> None:
        self.disks = LocalDisks(root)
        self.max_mb = max_mb

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            return {"ok": True, **self._do(self._parse(line))}
        except Refused as exc:
            logger.warning("workspace disk service: refused a request: %s", exc)
            return {"ok": False, "error": str(exc), "permanent": True}
        except SandboxError as exc:
            return {"ok": False, "error": exc.message, "permanent": exc.permanent}
        except Exception:
            logger.exception("workspace disk service: a request failed")
            return {"ok": False, "error": "internal error (see the service's log)",
                    "permanent": False}

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            raise Refused("a request is one JSON object on one line") from None
        if not isinstance(request, dict):
            raise Refused("a request is one JSON object on one line")
        op = request.get("op")
        if not isinstance(op, str) or op not in _FIELDS:
            raise Refused(f"op must be one of {', '.join(sorted(_FIELDS))}")
        if set(request) != _FIELDS[op] | {"op"}:
            raise Refused(f"{op} takes exactly {', '.join(sorted(_FIELDS[op]))}")
        return request

    def _do(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        site = _name(request, "site")
        if op == "list":
            return {"volumes": self.disks.volumes(site)}
        disk = self.disks.disk(site, _name(request, "volume"))
        if op == "ensure":
            disk.ensure(_size(request, self.max_mb, optional=True))
            return {"mountpoint": str(disk.mountpoint)}
        if op == "grow":
            size = _size(request, self.max_mb, optional=False)
            assert size is not None
            disk.grow(size)
            return {}
        if op == "release":
            disk.release()
            return {}
        return {"exists": disk.exists()}


class _Handler(socketserver.StreamRequestHandler):
    timeout = IDLE_TIMEOUT_S
    server: WorkspaceDiskServer

    def handle(self) -> None:
        try:
            while True:
                line = self.rfile.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                if not line.endswith(b"\n"):
                    # Too long (or cut off): nothing of it is done, and the rest is not read.
                    self._reply({"ok": False, "permanent": True,
                                 "error": f"a request line is at most {MAX_LINE_BYTES} bytes"})
                    return
                self._reply(self.server.service.answer(line))
        except OSError:
            return  # the client went away or idled out

    def _reply(self, answer: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(answer).encode() + b"\n")
        self.wfile.flush()


class WorkspaceDiskServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The service on a unix socket at ``socket_path``, owned by ``owner_uid`` (the worker's
    user) with mode 0600, or root's alone when None."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, socket_path: str | Path, service: WorkspaceDiskService,
                 owner_uid: int | None = None) -> None:
        path = Path(socket_path)
        if path.is_socket():
            path.unlink()  # left by a previous run; a regular file there is an error
        elif path.exists() and stat.S_ISREG(path.stat().st_mode):
            raise SandboxError(f"{path} exists and is not a socket", permanent=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.service = service
        old_umask = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old_umask)
        if owner_uid is not None:
            os.chown(path, owner_uid, -1)
        os.chmod(path, 0o600)
