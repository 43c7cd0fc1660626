"""The login lockout counts failures per username and per address, each on its own, and takes
the address from X-Forwarded-For only as far as the site's own proxies wrote it."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from agentide.accounts.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", "alice@example.test", "correct-horse-42")


def login(client: Client, username: str, password: str, **meta: str):
    return client.post(reverse("login"), {"username": username, "password": password}, **meta)


def test_failures_for_one_user_from_many_addresses_lock_the_user(alice, settings):
    for n in range(settings.AXES_FAILURE_LIMIT):
        login(Client(), "alice", "nope", REMOTE_ADDR=f"203.0.113.{n + 1}")
    response = login(Client(), "alice", "correct-horse-42", REMOTE_ADDR="198.51.100.7")
    assert response.status_code == 429
    assert b"Too many failed log-ins" in response.content


def test_failures_for_many_users_from_one_address_lock_the_address(alice, settings):
    for n in range(settings.AXES_FAILURE_LIMIT):
        login(Client(), f"guess{n}", "nope", REMOTE_ADDR="203.0.113.9")
    locked = login(Client(), "alice", "correct-horse-42", REMOTE_ADDR="203.0.113.9")
    assert locked.status_code == 429
    # Another address still gets in.
    other = login(Client(), "alice", "correct-horse-42", REMOTE_ADDR="203.0.113.10")
    assert other.status_code == 302


def test_a_spoofed_forwarded_for_does_not_change_the_address_without_proxies(alice, settings):
    assert settings.AGENTIDE_TRUSTED_PROXY_COUNT == 0
    for n in range(settings.AXES_FAILURE_LIMIT):
        login(Client(), f"guess{n}", "nope", REMOTE_ADDR="203.0.113.9",
              HTTP_X_FORWARDED_FOR=f"192.0.2.{n + 1}")
    response = login(Client(), "alice", "correct-horse-42", REMOTE_ADDR="203.0.113.9",
                     HTTP_X_FORWARDED_FOR="192.0.2.200")
    assert response.status_code == 429


def test_behind_one_proxy_the_address_is_the_one_the_proxy_appended(alice, settings):
    settings.AGENTIDE_TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    for n in range(settings.AXES_FAILURE_LIMIT):
        # The client writes a fresh left-most entry each time; the proxy appends the real one.
        login(Client(), f"guess{n}", "nope", REMOTE_ADDR=proxy,
              HTTP_X_FORWARDED_FOR=f"192.0.2.{n + 1}, 203.0.113.9")
    locked = login(Client(), "alice", "correct-horse-42", REMOTE_ADDR=proxy,
                   HTTP_X_FORWARDED_FOR="192.0.2.200, 203.0.113.9")
    assert locked.status_code == 429
    other = login(Client(), "alice", "correct-horse-42", REMOTE_ADDR=proxy,
                  HTTP_X_FORWARDED_FOR="203.0.113.9, 203.0.113.10")
    assert other.status_code == 302
