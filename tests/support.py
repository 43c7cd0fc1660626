"""Helpers of the tests and of the bench: waiting, ports, logging in, child processes, Chromium.

Plain functions and classes, no pytest fixtures (``tests/conftest.py`` holds those and builds
them from what is here; ``bench/`` uses the same helpers against its private stack). Nothing
here reads Django's settings at import time: the bench imports it before it configures Django.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.test import Client
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
# Logs of the processes the tests start, and screenshots.
ARTIFACTS = Path(os.environ.get("AGENTIDE_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts"))

# Debian's Chromium, driven by Playwright; Playwright never downloads a browser.
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
VIEWPORT = {"width": 1280, "height": 860}


# --- waiting -----------------------------------------------------------------------------------


class WaitTimeout(AssertionError, TimeoutError):
    """A wait ran out of time: a failed assertion in a test, a ``TimeoutError`` to the bench."""


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05,
    what: str = "",
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; raise
    ``WaitTimeout`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)
    return result


async def wait_until_async(
    predicate: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.02,
    what: str = "",
) -> Any:
    """``wait_until`` for async code: the loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        await asyncio.sleep(interval)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- logging in --------------------------------------------------------------------------------


def session_id_for(user: Any) -> str:
    """A fresh logged-in Django session of ``user``: the ``sessionid`` cookie's value."""
    client = Client()
    client.force_login(user)
    return str(client.cookies["sessionid"].value)


def cookie_for(user: Any) -> str:
    """A ``Cookie`` header value that logs ``user`` in (websocket clients)."""
    return f"sessionid={session_id_for(user)}"


def logged_in_page(browser: Any, base_url: str, user: Any) -> Any:
    """A new Chromium tab (in a context of its own) logged in as ``user`` on ``base_url``.

    Script errors and console errors collect in ``page.errors``."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_cookies([{"name": "sessionid", "value": session_id_for(user), "url": base_url}])
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    return page


def open_page(browser: Any, server: Any, user: Any, session: Any) -> Any:
    """The notebook page of ``session`` as ``user``, once its socket is live; ``server`` has a
    ``url``. Console errors are collected in ``page.errors`` too."""
    page = logged_in_page(browser, server.url, user)
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{server.url}/s/{session.pk}/")
    page.wait_for_selector("#connection[data-state=live]")
    return page


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright's sync API, closed on exit.

    Playwright keeps an event loop running in this thread while it is open (asyncio code must
    wait until it is closed); the ORM calls made beside it are plain synchronous calls, which
    Django would otherwise refuse inside a running loop."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                         headless=True)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


# --- child processes ---------------------------------------------------------------------------


@dataclass
class Process:
    """A child process writing to ``log``; with ``group`` it leads a process group of its own
    (a prefork worker's children included), and is stopped as a group."""

    proc: subprocess.Popen[bytes]
    log: Path
    group: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.group:  # children outlive a parent that was killed: take the group down too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def kill9(self) -> None:
        """SIGKILL at once (no graceful shutdown, no task acknowledgement)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def start_process(
    argv: list[str], env: dict[str, str], *, log: Path, group: bool = False
) -> Process:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=group)
    return Process(proc=proc, log=log, group=group)


def child_env(*, database_url: str, settings_module: str = "agentide.settings",
              **extra: str) -> dict[str, str]:
    """This process's environment for a Django child process on ``database_url``."""
    env = dict(os.environ)
    env.update(DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE=settings_module,
               PYTHONUNBUFFERED="1", **extra)
    return env


def start_daphne(port: int, env: dict[str, str], *, log: Path, group: bool = False,
                 timeout: float = 60.0) -> Process:
    """Daphne serving the ASGI app on 127.0.0.1:``port``, returned once it listens, with a
    connection pool as the Procfile gives it (unless ``env`` says otherwise)."""
    env = {"AGENTIDE_DB_POOL": "4", **env}
    process = start_process(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "agentide.asgi:application"],
        env, log=log, group=group,
    )

    def up() -> bool:
        if not process.alive():
            raise RuntimeError(f"daphne exited:\n{process.output()}")
        return port_open(port)

    wait_until(up, timeout=timeout, what="daphne to listen")
    return process


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


def start_test_daphne(port: int) -> Process:
    """Daphne on ``port`` against the test database, once it listens (a test may restart it)."""
    return start_daphne(port, child_env(database_url=test_database_url()),
                        log=ARTIFACTS / f"daphne-{port}.log")


def start_celery_worker(argv: list[str], env: dict[str, str], *, log: Path,
                        group: bool = False, timeout: float = 60.0) -> Process:
    """``celery -A agentide worker`` with ``argv`` after it, returned once it is ready."""
    process = start_process([sys.executable, "-m", "celery", "-A", "agentide", "worker", *argv],
                            env, log=log, group=group)

    def ready() -> bool:
        if not process.alive():
            raise RuntimeError(f"celery worker exited:\n{process.output()}")
        return " ready." in process.output()

    wait_until(ready, timeout=timeout, interval=0.2, what="the celery worker to be ready")
    return process
