"""Queued cells are bounded per session and per user (issue 12 item 7): a clear refusal,
nothing half-created, and room again once cells finish."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from agentide.events.models import Event
from agentide.lib.output import CappedOutput
from agentide.sessions import execution, services
from agentide.sessions.models import Cell


@pytest.fixture
def bounds(settings: Any) -> Any:
    settings.AGENTIDE_MAX_QUEUED_CELLS_PER_SESSION = 3
    settings.AGENTIDE_MAX_QUEUED_CELLS_PER_USER = 4
    return settings


def run_next(session: Any) -> None:
    cell = execution.claim_next_cell(session.pk, worker="test")
    assert cell is not None
    execution.finish_cell(cell, status=Cell.Status.FINISHED, exit_code=0, output=CappedOutput())


def refusal(actor: Any, session: Any, source: str = "echo one more") -> str:
    before = (session.cells.count(), Event.objects.filter(session=session).count())
    with pytest.raises(ValidationError) as info:
        execution.submit_cell(actor, session, "shell", source)
    assert (session.cells.count(), Event.objects.filter(session=session).count()) == before
    return " ".join(info.value.messages)


def test_a_session_holds_a_bounded_number_of_queued_cells(
    personas: Any, session: Any, bounds: Any, no_tasks: list[int]
) -> None:
    member, admin = personas.membership(personas.member), personas.membership(personas.admin)
    for i in range(2):
        execution.submit_cell(member, session, "shell", f"echo {i}")
    execution.submit_cell(admin, session, "shell", "echo admin")
    assert "This session already has 3 cells waiting to run" in refusal(admin, session)
    assert "already has 3" in refusal(member, session)
    # Notes never wait: they are not bounded.
    execution.submit_cell(member, session, "note", "a note")
    # A cell that runs frees its place; one that finishes keeps it free.
    run_next(session)
    execution.submit_cell(member, session, "shell", "echo again")
    assert "already has 3" in refusal(member, session)
    queued = session.cells.filter(status=Cell.Status.QUEUED).first()
    execution.cancel_cell(member, session, queued.pk)
    execution.submit_cell(member, session, "shell", "echo after a cancel")


def test_a_user_holds_a_bounded_number_of_queued_cells_across_sessions(
    personas: Any, session: Any, project: Any, bounds: Any, no_tasks: list[int]
) -> None:
    member = personas.membership(personas.member)
    second = services.create_session(member, project, "Second")
    for target in (session, session, second, second):
        execution.submit_cell(member, target, "shell", "echo mine")
    message = refusal(member, second)
    assert message.startswith("You already have 4 cells waiting to run")
    refusal(member, services.create_session(member, project, "Third"))
    # Others are not held back by one member's queue.
    execution.submit_cell(personas.membership(personas.owner), session, "shell", "echo owner")
    run_next(second)
    execution.submit_cell(member, second, "shell", "echo room again")


def test_the_composer_shows_the_refusal(
    client: Any, personas: Any, session: Any, bounds: Any, no_tasks: list[int]
) -> None:
    bounds.AGENTIDE_MAX_QUEUED_CELLS_PER_SESSION = 1
    client.force_login(personas.member)
    url = reverse("cell_create", args=[session.pk])
    assert client.post(url, {"kind": "shell", "source": "echo 1"}).status_code == 200
    htmx = client.post(url, {"kind": "shell", "source": "echo 2"}, headers={"HX-Request": "true"})
    assert htmx.status_code == 422
    assert "This session already has 1 cells waiting to run" in htmx.content.decode()
    plain = client.post(url, {"kind": "shell", "source": "echo 2"})
    assert plain.status_code == 422
    assert session.cells.count() == 1
