"""Run the workspace disk service (``workspace_disk_server``): the privileged process that
mounts size-limited workspaces for workers that cannot (compose's ``disks`` service)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentide.sandboxes import conf
from agentide.sandboxes.backends.base import SandboxError
from agentide.sandboxes.backends.workspace_disk import host_support
from agentide.sandboxes.backends.workspace_disk_server import (
    WorkspaceDiskServer,
    WorkspaceDiskService,
)


class Command(BaseCommand):
    help = ("Serve workspace disks (make/mount/grow/release ext4 images under "
            "AGENTIDE_SANDBOX_WORKSPACE_DIR) on the unix socket "
            "AGENTIDE_SANDBOX_WORKSPACE_DISK_SOCKET. Needs root and loop devices.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--socket-owner", type=int, default=None, metavar="UID",
                            help="uid that may use the socket (the worker's); default root")

    def handle(self, *args: Any, **options: Any) -> None:
        socket_path = conf.workspace_disk_socket()
        if not socket_path:
            raise CommandError("AGENTIDE_SANDBOX_WORKSPACE_DISK_SOCKET is not set.")
        reason = host_support()
        if reason:
            raise CommandError(f"cannot serve workspace disks: {reason}")
        service = WorkspaceDiskService(conf.workspace_dir(), conf.max_disk_mb())
        try:
            server = WorkspaceDiskServer(socket_path, service, owner_uid=options["socket_owner"])
        except (OSError, SandboxError) as exc:
            raise CommandError(f"cannot listen on {socket_path}: {exc}") from exc
        self.stdout.write(f"Serving workspace disks under {conf.workspace_dir()} on "
                          f"{socket_path}.")
        self.stdout.flush()
        with server:
            server.serve_forever()
