"""Losing access closes live sockets at once, server side (issue 12 item 3): real Daphne, the
real Redis channel layer, a real websocket client that sends nothing after connecting."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from agentide.accounts.models import Role
from agentide.events import log as event_log
from agentide.events import registry
from agentide.sessions.models import Session
from tests.support import cookie_for, open_page

pytestmark = pytest.mark.django_db(transaction=True)

CLOSE_WITHIN_S = 30  # a bound for a loaded machine, not a speed goal: it takes milliseconds


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def open_socket(sockets: ExitStack, server: Any, user: Any, session: Any) -> ClientConnection:
    """A connected socket that has received its presence frame (so it is in its groups)."""
    connection = connect(
        f"{server.ws_url}/ws/sessions/{session.pk}/?last_seq={session.last_seq}",
        origin="http://localhost",  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie_for(user)},
        open_timeout=20,
    )
    ws = sockets.enter_context(connection)
    while '"html"' not in str(ws.recv(timeout=20)):
        pass
    return ws


def close_code(ws: ClientConnection) -> int | None:
    """Read frames (never sending one) until the server closes; its close code."""
    try:
        while True:
            ws.recv(timeout=CLOSE_WITHIN_S)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def still_open(ws: ClientConnection, session: Any) -> bool:
    """The socket still streams: a new event reaches it. The channel layer may drop a message
    (the consumer fills the gap at the next event), so another event follows a late one."""
    deadline = time.monotonic() + CLOSE_WITHIN_S
    while time.monotonic() < deadline:
        event_log.append_event(session.pk, registry.ERROR, {"message": "test"})
        seq = Session.objects.get(pk=session.pk).last_seq
        try:
            while True:
                frame = json.loads(ws.recv(timeout=2))
                if frame["type"] == "events" and frame["last"] >= seq:
                    return True
        except TimeoutError:
            continue
    return False


def remove(personas: Any) -> None:
    personas.membership(personas.member).delete()


def demote(personas: Any) -> None:
    membership = personas.membership(personas.member)
    membership.role = Role.REVIEWER
    membership.save(update_fields=["role"])


def deactivate(personas: Any) -> None:
    personas.member.is_active = False
    personas.member.save()


def new_password(personas: Any) -> None:
    personas.member.set_password("a-brand-new-password-987")
    personas.member.save()


def delete_team(personas: Any) -> None:
    personas.team.delete()


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (remove, 4403),
        (deactivate, 4403),
        (new_password, 4403),
        (delete_team, 4403),
        # Still a reader, but the page's run/cancel controls are stale: it reloads.
        (demote, 4409),
    ],
)
def test_losing_access_closes_the_users_sockets_without_any_client_message(
    personas: Any,
    session: Any,
    daphne_server: Any,
    sockets: ExitStack,
    change: Callable[[Any], None],
    code: int,
) -> None:
    ws = open_socket(sockets, daphne_server, personas.member, session)
    other_tab = open_socket(sockets, daphne_server, personas.member, session)
    bystander = open_socket(sockets, daphne_server, personas.reviewer, session)
    change(personas)
    assert close_code(ws) == code
    assert close_code(other_tab) == code
    if change is not delete_team:
        assert still_open(bystander, session)


def test_unrelated_changes_keep_the_socket_open(
    personas: Any, session: Any, daphne_server: Any, sockets: ExitStack
) -> None:
    ws = open_socket(sockets, daphne_server, personas.member, session)
    reviewer = personas.membership(personas.reviewer)
    reviewer.role = Role.MEMBER  # another member's role
    reviewer.save()
    personas.member.first_name = "Mona"  # the user's own name
    personas.member.save()
    other = personas.membership(personas.member)
    other.save()  # the same role saved again
    personas.other_team.memberships.create(user=personas.member, role=Role.MEMBER)
    assert still_open(ws, session)


@pytest.mark.browser
def test_the_page_asks_the_server_again_when_access_changes(
    personas: Any, session: Any, daphne_server: Any, browser: Any
) -> None:
    from playwright.sync_api import expect

    page = open_page(browser, daphne_server, personas.member, session)
    expect(page.locator("#composer-source")).to_have_count(1)
    # Demoted to reviewer: the page comes back without the composer, and live again.
    demote(personas)
    expect(page.locator("#composer-source")).to_have_count(0, timeout=CLOSE_WITHIN_S * 1000)
    page.wait_for_selector("#connection[data-state=live]")
    # Removed: the page comes back as the server answers an outsider, without a notebook.
    remove(personas)
    expect(page.locator("#notebook")).to_have_count(0, timeout=CLOSE_WITHIN_S * 1000)
    page.context.close()
