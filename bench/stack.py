"""The benchmark stack: private Redis, a PostgreSQL database of its own, Daphne, a Celery
worker and beat, all started and stopped by the bench, and websocket viewers that behave
like the notebook page (track the last seq, reconnect with it).

Nothing here touches the shared services of the machine: Redis runs on its own loopback
port, the database is ``agentide_bench`` (dropped and re-created per run), the processes are
children of the bench, and sandboxes carry the ``agentide-bench`` site label
(``bench/settings.py``). Every wait has a deadline; ``Stack.close`` stops everything it
started, and is meant for a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import (
    Process,
    child_env,
    cookie_for,
    free_port,
    start_celery_worker,
    start_daphne,
    start_process,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
VAR = Path(os.environ.get("AGENTIDE_BENCH_VAR", ROOT / "var" / "bench"))
PYTHON = sys.executable
REDIS_PORT = int(os.environ.get("AGENTIDE_BENCH_REDIS_PORT", "6391"))
PG_ADMIN_URL = os.environ.get(
    "AGENTIDE_BENCH_PG_URL", "postgres://agentide:agentide@127.0.0.1:5432/agentide"
)
DB_NAME = "agentide_bench"
SITE = "agentide-bench"

# A line the sandbox prints: marker, session tag, line number, the container's clock.
MARK_RE = re.compile(r"M(\d+)_(\d+)_(\d+\.\d+)")


def database_url() -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME


def base_env(**extra: str) -> dict[str, str]:
    """The environment of every bench process (and of the bench itself)."""
    return child_env(
        database_url=database_url(), settings_module="bench.settings",
        REDIS_URL=f"redis://127.0.0.1:{REDIS_PORT}/0", AGENTIDE_VAR_DIR=str(VAR / "var"),
        AGENTIDE_TEST_FAST_HASHER="1", PYTHONPATH=str(ROOT), **extra,
    )


# --- processes -------------------------------------------------------------------------------


_starts: dict[str, int] = {}  # per name, so a restarted service gets a new log file


@dataclass
class Service:
    """One child process of the bench, in its own process group (a worker's pool included).
    ``launch(log)`` starts it and returns once it is up; each start logs to a new file."""

    name: str
    launch: Callable[[Path], Process]
    process: Process | None = None

    def start(self) -> None:
        _starts[self.name] = _starts.get(self.name, 0) + 1
        self.process = self.launch(VAR / f"{self.name}.{_starts[self.name]}.log")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def output(self) -> str:
        return self.process.output() if self.process is not None else ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)

    def kill9(self) -> None:
        if self.process is not None:
            self.process.kill9()

    def tree_pids(self) -> list[int]:
        if not self.alive():
            return []
        return [self.pid, *_children(self.pid)]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            child = int(stat.parent.name)
            found += [child, *_children(child)]
    return found


def proc_kib(pid: int, key: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak RSS) of a process in KiB, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Stack:
    """Private Redis + database + Daphne + worker (+ beat), for benchmarks and drills."""

    def __init__(self, *, concurrency: int = 8, lease_s: int = 30) -> None:
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.port = free_port()
        self.redis: Service | None = None
        self.daphne: Service | None = None
        self.worker: Service | None = None
        self.beat: Service | None = None
        self.worker_env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- Redis ---------------------------------------------------------------------------

    def start_redis(self) -> None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", REDIS_PORT)) == 0:
                raise RuntimeError(
                    f"something already listens on 127.0.0.1:{REDIS_PORT}; set "
                    "AGENTIDE_BENCH_REDIS_PORT to a free port"
                )
        argv = ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "yes"]
        env = dict(os.environ)
        self.redis = Service("redis", lambda log: start_process(
            argv, env, log=log, group=True))
        self.redis.start()
        wait_until(self._redis_up, timeout=15, what="the bench Redis")

    def _redis_up(self) -> bool:
        assert self.redis is not None
        if not self.redis.alive():
            raise RuntimeError(f"redis-server exited:\n{self.redis.output()}")
        try:
            with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    # -- database ------------------------------------------------------------------------

    def clear_logs(self) -> None:
        for log in VAR.glob("*.log"):
            if log.name.split(".")[0] in {"redis", "daphne", "worker", "beat"}:
                log.unlink()

    def create_database(self) -> None:
        """Drop and re-create ``agentide_bench``, then migrate it (in this process)."""
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DB_NAME}")
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT,
            env=base_env(), check=True, timeout=300,
        )

    # -- web, worker, beat ---------------------------------------------------------------

    def start_daphne(self) -> None:
        env = base_env()
        self.daphne = Service("daphne", lambda log: start_daphne(
            self.port, env, log=log, group=True))
        self.daphne.start()

    def start_worker(self, **env: str) -> None:
        """A prefork worker like compose's; ``env`` adds variables (e.g. DOCKER_HOST)."""
        self.worker_env = env
        prefix = base_env(**env).get("AGENTIDE_REDIS_PREFIX", "agentide")
        argv = ["--loglevel", "INFO", "--pool", "prefork", "--concurrency",
                str(self.concurrency), "--without-gossip", "--without-mingle",
                "--without-heartbeat",
                # Cells and the terminal pumps' queue (agentide/sessions/terminals.py).
                "--queues", f"{prefix},{prefix}.terminal"]
        worker_env = base_env(AGENTIDE_CELL_LEASE_S=str(self.lease_s), **env)
        self.worker = Service("worker", lambda log: start_celery_worker(
            argv, worker_env, log=log, group=True, timeout=120))
        self.worker.start()

    def start_beat(self, every_s: float = 1.0) -> None:
        (VAR / "var").mkdir(parents=True, exist_ok=True)
        argv = [PYTHON, "-m", "celery", "-A", "agentide", "beat", "--loglevel", "INFO",
                "--schedule", str(VAR / "var" / "celerybeat-schedule")]
        env = base_env(AGENTIDE_EXPIRE_CELLS_EVERY_S=str(every_s),
                       AGENTIDE_CELL_LEASE_S=str(self.lease_s))
        self.beat = Service("beat", lambda log: start_process(argv, env, log=log,
                                                                   group=True))
        self.beat.start()

    def start(self) -> None:
        """Everything, in dependency order (the database must exist already)."""
        self.start_daphne()
        self.start_worker()

    def close(self) -> None:
        for service in (self.beat, self.worker, self.daphne, self.redis):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.stop()


# --- the bench process as a Django client ----------------------------------------------------


def setup_django(**env: str) -> None:
    """Configure this process for the bench database and Redis (before any model import)."""
    os.environ.update(base_env(**env))
    import django

    django.setup()


@dataclass
class Fixture:
    """A team with one member, a project, and a logged-in cookie for the websocket."""

    user: Any
    membership: Any
    project: Any
    cookie: str


def make_fixture(name: str = "bench") -> Fixture:
    from agentide.accounts.models import Membership, Role, Team, User
    from agentide.projects.models import Project

    user = User.objects.create_user(name, f"{name}@example.test", "bench-password-12345")
    team = Team.objects.create(name=f"Team {name}", slug=f"team-{name}")
    membership = Membership.objects.create(team=team, user=user, role=Role.MEMBER)
    project = Project.objects.create(team=team, name="Bench", slug="bench", created_by=user)
    return Fixture(user=user, membership=membership, project=project, cookie=cookie_for(user))


def new_session(fixture: Fixture, title: str = "bench") -> Any:
    from agentide.sessions.services import create_session

    return create_session(fixture.membership, fixture.project, title)


def submit(fixture: Fixture, session: Any, source: str) -> Any:
    from agentide.sessions.execution import submit_cell

    return submit_cell(fixture.membership, session, "shell", source)


def cell_status(cell_id: int) -> str:
    from agentide.sessions.models import Cell

    return str(Cell.objects.filter(pk=cell_id).values_list("status", flat=True).get())


def wait_cell_done(cell_id: int, timeout: float = 120) -> str:
    from agentide.sessions.models import Cell

    done = set(Cell.DONE)
    return str(wait_until(lambda: (s := cell_status(cell_id)) in done and s, timeout=timeout,
                          what=f"cell {cell_id} to finish", interval=0.05))


def last_seq(session_id: int) -> int:
    from agentide.sessions.models import Session

    return int(Session.objects.filter(pk=session_id).values_list("last_seq", flat=True).get())


def stuck_cells(session_ids: list[int]) -> int:
    """Cells still queued or running in these sessions."""
    from agentide.sessions.models import Cell

    return Cell.objects.filter(
        session_id__in=session_ids, status__in=[Cell.Status.QUEUED, Cell.Status.RUNNING]
    ).count()


def destroy_sandboxes() -> None:
    """Remove every sandbox of the bench database, then anything else labelled with the
    bench's site on the engine this process talks to."""
    from agentide.sandboxes import services as sandboxes
    from agentide.sandboxes.backends.docker import DockerBackend
    from agentide.sandboxes.models import Sandbox

    for row in Sandbox.objects.exclude(container_id=""):
        with contextlib.suppress(Exception):
            sandboxes.destroy_container(row)
    sweep_engine(DockerBackend(site=SITE))


def sweep_engine(backend: Any) -> int:
    """Remove the bench site's containers and volumes on one engine; returns how many."""
    from agentide.sandboxes.backends.base import SandboxHandle

    removed = 0
    with contextlib.suppress(Exception):
        for listing in backend.list_sandboxes():
            with contextlib.suppress(Exception):
                backend.destroy(SandboxHandle(listing.container_id, listing.volume))
                removed += 1
        for name in backend.list_volumes():
            with contextlib.suppress(Exception):
                backend.remove_volume(name)
    return removed


def stream_command(tag: int, lines: int, interval_s: float) -> str:
    """A shell cell printing ``lines`` marker lines, one every ``interval_s``, each carrying
    the container's clock (the same kernel clock as the bench's ``time.time()``)."""
    return (
        "python3 -u -c 'import time\n"
        f"for i in range({lines}):\n"
        f"    print(\"M{tag}_%d_%.6f\" % (i, time.time()), flush=True)\n"
        f"    time.sleep({interval_s})'"
    )


# --- websocket viewers -----------------------------------------------------------------------


@dataclass
class Viewer:
    """A websocket client that behaves like the notebook page.

    It connects with ``?last_seq=N`` (N = the last seq it applied), records every seq it
    receives (a seq received twice is a duplicate), the receive time of every marker line,
    and reconnects with its last seq when the connection drops (every 0.2 s, while
    ``running``).
    """

    url: str
    cookie: str
    origin: str
    last_seq: int = 0
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    connects: int = 0
    marks: dict[tuple[int, int], float] = field(default_factory=dict)  # (tag, line) -> latency
    live_marks: list[float] = field(default_factory=list)  # latencies of marks seen live
    frames: list[tuple[float, str]] = field(default_factory=list)
    keep_frames: bool = False
    joined_after: int = field(init=False, default=0)
    disconnects: int = 0  # connections that failed or were closed by the server
    last_message: float = 0.0  # time.monotonic() of the last frame of any type
    running: bool = True
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, deadline_s: float) -> None:
        """Stay connected (reconnecting as needed) until ``running`` goes false or
        ``deadline_s`` seconds pass."""
        from websockets.asyncio.client import connect

        end = time.monotonic() + deadline_s
        while self.running and time.monotonic() < end:
            try:
                async with connect(
                    f"{self.url}?last_seq={self.last_seq}",
                    additional_headers={"Cookie": self.cookie}, origin=self.origin,  # type: ignore[arg-type]
                    max_size=None, open_timeout=10, ping_interval=None,
                    close_timeout=2,
                ) as ws:
                    self.connects += 1
                    self.connected.set()
                    while self.running and time.monotonic() < end:
                        try:
                            raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                        except TimeoutError:
                            continue
                        self._on_message(raw)
                    await ws.close()
            except Exception:
                self.disconnects += 1
                self.connected.clear()
                if self.running:
                    await asyncio.sleep(0.2)

    def _on_message(self, raw: str | bytes) -> None:
        now = time.time()
        self.last_message = time.monotonic()
        message = json.loads(raw)
        if message.get("type") != "events":
            return
        first, last = int(message["first"]), int(message["last"])
        for seq in range(first, last + 1):
            if seq in self.seen:
                self.duplicates += 1
            self.seen.add(seq)
        self.last_seq = max(self.last_seq, last)
        html = message["html"]
        if self.keep_frames:
            self.frames.append((now, html))
        replay = first != last  # live events come one per frame
        for match in MARK_RE.finditer(html):
            key = (int(match[1]), int(match[2]))
            if key in self.marks:
                continue
            latency = now - float(match[3])
            self.marks[key] = latency
            if not replay:
                self.live_marks.append(latency)

    def __post_init__(self) -> None:
        self.joined_after = self.last_seq  # events up to here were never this viewer's

    def lost(self, up_to: int) -> int:
        """Seqs after the one it joined at, up to ``up_to``, this viewer never received."""
        return len(set(range(self.joined_after + 1, up_to + 1)) - self.seen)


def viewer(stack: Stack, fixture: Fixture, session_id: int, **kwargs: Any) -> Viewer:
    return Viewer(
        url=f"ws://127.0.0.1:{stack.port}/ws/sessions/{session_id}/",
        cookie=fixture.cookie, origin=stack.url, **kwargs,
    )


def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an ORM call from async code (in a thread: the ORM is synchronous)."""
    return asyncio.to_thread(fn, *args, **kwargs)
