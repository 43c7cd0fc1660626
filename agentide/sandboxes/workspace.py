"""A session's /workspace as the files panel sees it: listing, download, upload.

Callers check access first (the session's access helper; writers only for uploads), then
call these. Listing and downloading never start or create a sandbox (a reviewer's GET
must not run anything); an upload starts it under the caller's ``Admission``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import BinaryIO

from django.core.exceptions import ValidationError
from django.http import Http404

from agentide.sandboxes import services
from agentide.sandboxes.backends.base import (
    DirListing,
    FileStream,
    FileTooLarge,
    SandboxNotFound,
    SandboxNotRunning,
)
from agentide.sandboxes.models import Sandbox
from agentide.sandboxes.services import NOT_RUNNING, Admission, SessionRef


def list_workspace(session: SessionRef, path: str) -> tuple[DirListing | list[object], str]:
    """Entries of ``path`` under /workspace (a ``DirListing``, or [] when unavailable) and
    an error message ("" when fine; ``NOT_RUNNING`` without a running sandbox).

    A session without a running sandbox lists nothing rather than starting a container.
    """
    if services.sandbox_state(session) != Sandbox.State.RUNNING:
        return [], NOT_RUNNING
    try:
        entries = services.list_files(session, path)
    except SandboxNotRunning:
        return [], NOT_RUNNING
    except Exception as exc:
        return [], f"Cannot list /workspace/{path}: {getattr(exc, 'message', exc)}"
    # The runner keeps the shell's state in /workspace/.agentide: not the user's files.
    shown = [e for e in entries if e.path.strip("/") != ".agentide"]
    return replace(entries, entries=sorted(shown, key=lambda e: (e.kind != "dir", e.name))), ""


class DownloadRefused(Exception):
    """A workspace file that is not served: ``message`` says why, ``status`` is the HTTP
    status that fits (403 over the site's limit, 409 without a container to read)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def open_workspace_file(session: SessionRef, path: str, *, max_bytes: int) -> FileStream:
    """Stream a file under /workspace, from a running or a stopped sandbox; never starts one.

    Raises DownloadRefused for a file over ``max_bytes`` or a session without a container to
    read from, Http404 for a path that is not a readable regular file.
    """
    try:
        return services.open_file(session, path, max_bytes=max_bytes)
    except FileTooLarge as exc:
        raise DownloadRefused(
            f"/workspace/{path} is {exc.size / 2**20:.1f} MiB; downloads are limited to "
            f"{exc.limit / 2**20:g} MiB. Split or compress it with a command first.",
            status=403,
        ) from exc
    except SandboxNotFound as exc:
        raise DownloadRefused(
            "The sandbox has no container to read files from; it is made by the next command.",
            status=409,
        ) from exc
    except Exception as exc:
        raise Http404(f"Cannot read {path}: {getattr(exc, 'message', exc)}") from exc


def write_workspace_file(
    session: SessionRef, path: str, data: bytes | BinaryIO, *, admission: Admission
) -> None:
    """Create or replace a file under /workspace from bytes or a seekable file, starting the
    sandbox under ``admission`` if needed; ValidationError on failure (a refused start
    included). The caller has checked that the user may write."""
    try:
        services.write_file(session, path, data, admission=admission)
    except Exception as exc:
        raise ValidationError(f"Upload failed: {getattr(exc, 'message', exc)}") from exc
