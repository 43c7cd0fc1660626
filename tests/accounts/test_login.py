"""Logging in, out, changing passwords, and the login rate limit."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agentide.accounts.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", "alice@example.test", "correct-horse-42")


def test_a_user_logs_in_and_out(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "correct-horse-42"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post(reverse("logout"))
    assert client.get("/").status_code == 302


def test_a_wrong_password_shows_an_error(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_repeated_failures_lock_the_login(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post(reverse("login"), {"username": "alice", "password": "nope"})
    response = client.post(reverse("login"), {"username": "alice", "password": "correct-horse-42"})
    assert response.status_code == 429
    assert b"Too many failed log-ins" in response.content


def test_password_change(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("password_change"),
        {
            "old_password": "correct-horse-42",
            "new_password1": "a-new-long-secret-9",
            "new_password2": "a-new-long-secret-9",
        },
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("a-new-long-secret-9")


def test_bootstrap_admin_prints_a_password_once(db, capsys):
    from django.core.management import call_command

    call_command("bootstrap_admin")
    first = capsys.readouterr().out
    assert "with the password:" in first
    password = first.split("with the password: ")[1].split()[0]
    assert User.objects.get(username="admin").check_password(password)
    call_command("bootstrap_admin")
    assert "no new password" in capsys.readouterr().out
