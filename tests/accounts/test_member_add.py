"""Adding a member needs the exact username or email; every miss reads the same."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from agentide.accounts.models import User

pytestmark = pytest.mark.django_db


def add(personas: Any, identifier: str) -> bytes:
    client = Client()
    client.force_login(personas.owner)
    response = client.post(
        reverse("member_add", args=["acme"]),
        {"identifier": identifier, "role": "member"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    return response.content


@pytest.fixture
def people(personas: Any) -> Any:
    User.objects.create_user("dana", "dana@example.test", "pw-dana-12345")
    User.objects.create_user("eve", "eve@example.test", "pw-eve-12345", is_active=False)
    return personas


def test_an_exact_username_or_email_in_any_case_adds_the_user(people):
    assert b"dana joined the team" in add(people, "DANA")
    people.team.memberships.filter(user__username="dana").delete()
    assert b"dana joined the team" in add(people, "Dana@Example.TEST")
    assert people.team.memberships.filter(user__username="dana").exists()


def errors_of(body: bytes) -> str:
    found = re.search(rb'<div class="errors" role="alert">(.*?)</div>', body, re.S)
    assert found, body
    return found.group(1).decode()


@pytest.mark.parametrize(
    "identifier",
    ["dan", "ana", "dana@example", "example.test", "dan*", "d%", "eve", "eve@example.test",
     "ghost", "ghost@example.test"],
)
def test_partial_inactive_and_unknown_names_get_one_message(people, identifier):
    assert errors_of(add(people, identifier)) == "<p>No such user.</p>"
    assert not people.team.memberships.filter(user__username__in=["dana", "eve"]).exists()
