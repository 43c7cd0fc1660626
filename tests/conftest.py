"""Shared fixtures: personas, and the real processes (Daphne, a Celery worker, Chromium).

The test command (scripts/test.sh) provides PostgreSQL, Redis and the Docker engine; nothing
here skips when one is missing: a missing service fails the run loudly.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from agentide.celery import app as celery_app

# The suite creates many users: PBKDF2's deliberate slowness would dominate its run time.
# The environment variable carries the same choice to the Daphne and Celery processes.
os.environ["AGENTIDE_TEST_FAST_HASHER"] = "1"
settings.PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]

# The fake model servers listen on loopback, which the site refuses by default: this suite is a
# site that runs its model server on the worker's host. Child processes inherit the choice.
os.environ["AGENTIDE_MODEL_PRIVATE_NETWORKS"] = "127.0.0.0/8"
settings.AGENTIDE_MODEL_PRIVATE_NETWORKS = ["127.0.0.0/8"]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("AGENTIDE_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def wait_until(
    predicate: Any, *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> None:
    """Give each checkout/var dir its own test database, so concurrent runs never collide."""
    var_dir = os.environ.get("AGENTIDE_VAR_DIR", str(ROOT / "var"))
    suffix = hashlib.sha256(var_dir.encode()).hexdigest()[:8]
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.postgresql":
        db.setdefault("TEST", {})["NAME"] = f"test_{db['NAME']}_{suffix}"


# A Redis namespace of this run's own (channel layer, Celery queue, presence): concurrent test
# runs on one machine share Redis but never each other's messages or tasks.
RUN_ID = uuid.uuid4().hex[:8]
os.environ["AGENTIDE_REDIS_PREFIX"] = f"test-{RUN_ID}"
settings.REDIS_PREFIX = os.environ["AGENTIDE_REDIS_PREFIX"]
settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = settings.REDIS_PREFIX
settings.CELERY_TASK_DEFAULT_QUEUE = settings.REDIS_PREFIX
celery_app.conf.task_default_queue = settings.REDIS_PREFIX


@pytest.fixture(scope="session", autouse=True)
def sandbox_site() -> Iterator[str]:
    """A sandbox site of this test run's own: reconcile in this run (and its worker processes)
    never touches another run's containers, and everything the run made is removed at the end."""
    site = f"test-{RUN_ID}"
    settings.AGENTIDE_SANDBOX_SITE = site
    os.environ["AGENTIDE_SANDBOX_SITE"] = site
    yield site
    from agentide.sandboxes.services import purge_site_sandboxes

    purge_site_sandboxes()


# --- personas -------------------------------------------------------------------------------


@dataclass
class Personas:
    team: Any
    owner: Any
    admin: Any
    member: Any
    reviewer: Any
    outsider: Any
    other_team: Any

    def membership(self, user: Any) -> Any:
        return self.team.memberships.get(user=user)


@pytest.fixture
def personas(db: None) -> Personas:
    """A team with an owner, an admin, a member and a reviewer, and an outsider who owns
    another team."""
    from agentide.accounts.models import Membership, Role, Team, User

    def user(name: str) -> User:
        return User.objects.create_user(name, f"{name}@example.test", "pw-" + name + "-12345")

    team = Team.objects.create(name="Acme", slug="acme")
    other = Team.objects.create(name="Other", slug="other")
    people = {role: user(role) for role in ("owner", "admin", "member", "reviewer", "outsider")}
    for role in (Role.OWNER, Role.ADMIN, Role.MEMBER, Role.REVIEWER):
        Membership.objects.create(team=team, user=people[role.value], role=role)
    Membership.objects.create(team=other, user=people["outsider"], role=Role.OWNER)
    return Personas(team=team, other_team=other, **people)


# --- real processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_database_url() -> str:
    """DATABASE_URL of the test database pytest-django created, for child processes."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise RuntimeError(
            "Process tests need PostgreSQL: run them through `make test` (DATABASE_URL)."
        )
    return (
        f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    )


test_database_url.__test__ = False  # type: ignore[attr-defined]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_database_url(),
        DJANGO_SETTINGS_MODULE="agentide.settings",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_process(name: str, argv: list[str], env: dict[str, str]) -> Process:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"{name}.log"
    handle = log.open("wb")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    return Process(proc=proc, log=log)


@dataclass
class LiveServer:
    url: str
    port: int
    process: Process

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")


def _start_daphne(port: int) -> Process:
    process = start_process(
        f"daphne-{port}",
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "agentide.asgi:application",
        ],
        child_env(),
    )

    def up() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(f"daphne exited:\n{process.output()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(up, timeout=30, what="daphne to listen")
    return process


@pytest.fixture
def daphne_server(transactional_db: None) -> Iterator[LiveServer]:
    """Daphne serving the ASGI app against the test database (data must be committed, hence
    transactional_db)."""
    port = free_port()
    process = _start_daphne(port)
    yield LiveServer(url=f"http://127.0.0.1:{port}", port=port, process=process)
    process.stop()


@pytest.fixture
def celery_worker(transactional_db: None) -> Iterator[Process]:
    """A real Celery worker process (prefork, 2 children) on the test database and Redis."""
    process = start_process(
        "celery-worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "agentide",
            "worker",
            "--loglevel",
            "INFO",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            # Cells and the terminal pumps' own queue (sessions/terminals.py).
            "--queues",
            f"{settings.REDIS_PREFIX},{settings.REDIS_PREFIX}.terminal",
        ],
        child_env(),
    )

    def ready() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(f"celery worker exited:\n{process.output()}")
        return "ready." in process.output()

    wait_until(ready, timeout=60, what="the celery worker to be ready")
    yield process
    process.stop()


# --- browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright; Playwright never downloads a browser.

    Module-scoped: Playwright's sync API keeps an event loop running in this thread while it
    is open, which would break asyncio code in the tests of other modules."""
    from playwright.sync_api import sync_playwright

    # The ORM calls that browser tests make beside Playwright's loop are plain synchronous
    # calls; Django would otherwise refuse them inside a running loop.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Any:
    """``screenshot(page, "step")`` saves var/test-artifacts/screenshots/<test>-<step>.png."""
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)

    def take(page: Any, step: str) -> Path:
        path = folder / f"{request.node.name}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
