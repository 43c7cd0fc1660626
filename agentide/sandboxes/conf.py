"""Every setting the sandboxes app reads, with its default, in one place.

Read through these functions (not at import time) so ``override_settings`` works in tests.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings


def _get(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def backend_path() -> str:
    """Dotted path of the ``SandboxBackend`` class."""
    return str(_get("AGENTIDE_SANDBOX_BACKEND",
                    "agentide.sandboxes.backends.docker.DockerBackend"))


def docker_host() -> str:
    """Docker engine URL; "" = the environment (DOCKER_HOST or the local socket)."""
    return str(_get("AGENTIDE_SANDBOX_DOCKER_HOST", ""))


def site() -> str:
    """This installation's name on the engine (a label); reconcile only sees its own site."""
    return str(_get("AGENTIDE_SANDBOX_SITE", "default"))


def default_image() -> str:
    return str(_get("AGENTIDE_SANDBOX_IMAGE", "agentide-sandbox:latest"))


def allowed_images() -> list[str]:
    """Images a project may choose; unset = only the default image (a project never runs an
    arbitrary image from the engine unless the site lists it)."""
    return list(_get("AGENTIDE_SANDBOX_ALLOWED_IMAGES", [])) or [default_image()]


def image_allowed(image: str) -> bool:
    return image == default_image() or image in allowed_images()


def runtime() -> str:
    """OCI runtime for sandboxes ("" = engine default; "runsc" for gVisor)."""
    return str(_get("AGENTIDE_SANDBOX_RUNTIME", ""))


# Ceilings: what an admin allows at most, whatever a project asks for.
def max_memory_mb() -> int:
    return int(_get("AGENTIDE_SANDBOX_MAX_MEMORY_MB", 4096))


def max_cpus() -> float:
    return float(_get("AGENTIDE_SANDBOX_MAX_CPUS", 2.0))


def max_pids() -> int:
    return int(_get("AGENTIDE_SANDBOX_MAX_PIDS", 1024))


def max_tmp_mb() -> int:
    return int(_get("AGENTIDE_SANDBOX_MAX_TMP_MB", 1024))


def max_disk_mb() -> int:
    """Largest workspace a project may ask for, MiB."""
    return int(_get("AGENTIDE_SANDBOX_MAX_DISK_MB", 10240))


def workspace_disk() -> str:
    """How workspaces are stored: "auto" (a size-limited ext4 image when the host can mount
    one, else a plain volume with a warning), "ext4" (required: no sandbox without a size
    limit) or "volume" (plain Docker volumes, no size limit)."""
    return str(_get("AGENTIDE_SANDBOX_WORKSPACE_DISK", "auto"))


def workspace_dir() -> str:
    """Host directory of the workspace images (on the Docker engine's host)."""
    return str(_get("AGENTIDE_SANDBOX_WORKSPACE_DIR", "/var/lib/agentide-workspaces"))


def workspace_disk_socket() -> str:
    """Unix socket of the workspace disk service (``manage.py serve_workspace_disks``) that
    makes the size-limited workspaces for a worker that cannot mount ("" = the worker makes
    them itself)."""
    return str(_get("AGENTIDE_SANDBOX_WORKSPACE_DISK_SOCKET", ""))


def nofile() -> int:
    return int(_get("AGENTIDE_SANDBOX_NOFILE", 4096))


def fsize_mb() -> int:
    """Largest file a sandbox process may write (RLIMIT_FSIZE), MiB."""
    return int(_get("AGENTIDE_SANDBOX_FSIZE_MB", 2048))


def default_timeout_s() -> int:
    return int(_get("AGENTIDE_SANDBOX_DEFAULT_TIMEOUT_S", 600))


def max_timeout_s() -> int:
    return int(_get("AGENTIDE_SANDBOX_MAX_TIMEOUT_S", 3600))


# Lifecycle.
def idle_stop_s() -> int:
    """Stop a sandbox after this long without a command (workspace kept)."""
    return int(_get("AGENTIDE_SANDBOX_IDLE_STOP_S", 1800))


def max_age_s() -> int:
    """Remove a sandbox (container and workspace) this long after it was created."""
    return int(_get("AGENTIDE_SANDBOX_MAX_AGE_S", 30 * 86400))


def orphan_grace_s() -> int:
    """Leave labelled containers without a row alone this long (they may be being made)."""
    return int(_get("AGENTIDE_SANDBOX_ORPHAN_GRACE_S", 600))


def warm_pool_size() -> int:
    """Running, unclaimed sandboxes kept ready for the default project profile."""
    return int(_get("AGENTIDE_SANDBOX_WARM_POOL_SIZE", 2))


# Files.
def max_read_bytes() -> int:
    return int(_get("AGENTIDE_SANDBOX_MAX_READ_BYTES", 25 * 1024 * 1024))


def max_list_entries() -> int:
    """Entries one directory listing shows at most (the file panel says when it stops)."""
    return int(_get("AGENTIDE_SANDBOX_MAX_LIST_ENTRIES", 2000))


def max_list_bytes() -> int:
    """Bytes of listing output read for one directory at most."""
    return int(_get("AGENTIDE_SANDBOX_MAX_LIST_BYTES", 1024 * 1024))


def max_write_bytes() -> int:
    return int(_get("AGENTIDE_SANDBOX_MAX_WRITE_BYTES", 25 * 1024 * 1024))
