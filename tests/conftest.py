"""Shared fixtures: personas, and the real processes (Daphne, a Celery worker, Chromium).

The test command (scripts/test.sh) provides PostgreSQL, Redis and the Docker engine; nothing
here skips when one is missing: a missing service fails the run loudly.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from agentide.celery import app as celery_app
from tests.support import (
    ARTIFACTS,
    ROOT,
    Process,
    child_env,
    chromium,
    free_port,
    start_celery_worker,
    start_test_daphne,
    test_database_url,
)
from tests.support import wait_until as wait_until  # still imported from here by some tests

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


@dataclass
class LiveServer:
    url: str
    port: int
    process: Process

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")


@pytest.fixture
def daphne_server(transactional_db: None) -> Iterator[LiveServer]:
    """Daphne serving the ASGI app against the test database (data must be committed, hence
    transactional_db)."""
    port = free_port()
    process = start_test_daphne(port)
    yield LiveServer(url=f"http://127.0.0.1:{port}", port=port, process=process)
    process.stop()


@pytest.fixture
def celery_worker(transactional_db: None) -> Iterator[Process]:
    """A real Celery worker process (prefork, 2 children) on the test database and Redis."""
    process = start_celery_worker(
        ["--loglevel", "INFO", "--pool", "prefork", "--concurrency", "2",
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         # Cells and the terminal pumps' own queue (sessions/terminals.py).
         "--queues", f"{settings.REDIS_PREFIX},{settings.REDIS_PREFIX}.terminal"],
        child_env(database_url=test_database_url()), log=ARTIFACTS / "celery-worker.log",
    )
    yield process
    process.stop()


# --- browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright; Playwright never downloads a browser.

    Module-scoped: Playwright's sync API keeps an event loop running in this thread while it
    is open, which would break asyncio code in the tests of other modules."""
    with chromium() as browser:
        yield browser


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
