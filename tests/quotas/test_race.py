"""Two requests racing for the last running-sandbox slot: real threads, real PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from agentide.quotas import services as quotas
from agentide.quotas.models import SandboxMeter
from agentide.quotas.services import QuotaExceeded
from agentide.sessions.services import create_session


def race(sessions: list[Any]) -> list[str]:
    """Start every session's sandbox at once (one thread each); return each outcome."""
    barrier = threading.Barrier(len(sessions))
    outcomes: list[str] = [""] * len(sessions)

    def start(index: int, session: Any) -> None:
        try:
            barrier.wait()
            quotas.check_can_start_sandbox(session)
            outcomes[index] = "granted"
        except QuotaExceeded as exc:
            outcomes[index] = exc.limit
        finally:
            connection.close()

    threads = [threading.Thread(target=start, args=(i, s)) for i, s in enumerate(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.django_db(transaction=True)
def test_two_sessions_racing_for_the_last_slot_cannot_both_win(personas, project, set_quota):
    assert connection.vendor == "postgresql"
    set_quota(max_running_sandboxes=1)
    member = personas.membership(personas.member)
    for round_ in range(5):
        SandboxMeter.objects.update(granted_at=None)  # every slot free again
        sessions = [create_session(member, project, f"r{round_}-{i}") for i in range(3)]
        outcomes = race(sessions)
        assert sorted(outcomes) == ["granted", "max_running_sandboxes", "max_running_sandboxes"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_charges_lose_no_usage(personas, project):
    from agentide.quotas.models import UsageRecord

    barrier = threading.Barrier(4)

    def charge() -> None:
        try:
            barrier.wait()
            for _ in range(10):
                quotas.charge(team_id=personas.team.pk, user_id=personas.member.pk,
                              kind=UsageRecord.Kind.SANDBOX, sandbox_seconds=3)
        finally:
            connection.close()

    threads = [threading.Thread(target=charge) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert quotas.usage_in(personas.team.pk).sandbox_seconds == 120
    assert quotas.usage_in(personas.team.pk, user_id=personas.member.pk).sandbox_seconds == 120
    assert UsageRecord.objects.count() == 40


@pytest.mark.django_db(transaction=True)
def test_two_members_racing_for_the_last_session_cannot_both_open_one(
    personas, project, set_quota
):
    set_quota(max_sessions=1)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def open_session(user: Any) -> None:
        try:
            barrier.wait()
            create_session(personas.membership(user), project, f"by {user}")
            outcomes.append("opened")
        except QuotaExceeded as exc:
            outcomes.append(exc.limit)
        finally:
            connection.close()

    threads = [threading.Thread(target=open_session, args=(u,))
               for u in (personas.member, personas.admin)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["max_sessions", "opened"]
    assert project.sessions.count() == 1
