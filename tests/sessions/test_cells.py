"""Cells without a sandbox: validation, queueing order, claims, cancel, leases."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from agentide.sessions import notebook, services
from agentide.sessions.models import Cell, Event

pytestmark = pytest.mark.django_db


def submit(personas, session, source, kind="shell", who=None):
    return services.submit_cell(personas.membership(who or personas.member), session, kind, source)


def test_a_shell_cell_is_queued_and_its_task_enqueued_on_commit(
    personas, session, no_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        cell = submit(personas, session, "echo hi")
    assert cell.status == Cell.Status.QUEUED
    assert no_tasks == [session.pk]
    created = Event.objects.get(session=session, type=Event.Type.CELL_CREATED)
    assert created.payload["source"] == "echo hi"
    assert created.actor == personas.member


@pytest.mark.parametrize("source", ["", "   ", "\n\n"])
def test_an_empty_command_is_refused(personas, session, no_tasks, source):
    with pytest.raises(ValidationError, match="Enter a command"):
        submit(personas, session, source)
    assert not Cell.objects.exists()


def test_input_over_64_kib_is_refused(personas, session, no_tasks):
    with pytest.raises(ValidationError, match="64 KiB"):
        submit(personas, session, "x" * (64 * 1024 + 1))
    assert submit(personas, session, "x" * (64 * 1024)).status == Cell.Status.QUEUED


def test_reviewers_cannot_submit_or_cancel(personas, session, no_tasks):
    with pytest.raises(PermissionDenied):
        submit(personas, session, "echo hi", who=personas.reviewer)
    cell = submit(personas, session, "echo hi")
    with pytest.raises(PermissionDenied):
        services.cancel_cell(personas.membership(personas.reviewer), session, cell.pk)


def test_cells_are_claimed_one_at_a_time_in_submission_order(personas, session, no_tasks):
    first = submit(personas, session, "echo 1")
    second = submit(personas, session, "echo 2", who=personas.owner)
    claimed = services.claim_next_cell(session.pk, worker="w1")
    assert claimed is not None and claimed.pk == first.pk
    assert claimed.status == Cell.Status.RUNNING
    # While one runs, nobody claims the next.
    assert services.claim_next_cell(session.pk, worker="w2") is None
    assert services.finish_cell(claimed, status=Cell.Status.FINISHED, outcome="exit", exit_code=0)
    nxt = services.claim_next_cell(session.pk, worker="w2")
    assert nxt is not None and nxt.pk == second.pk
    types = list(Event.objects.filter(session=session).values_list("type", flat=True))
    assert types == [
        "cell.created",
        "cell.created",
        "cell.started",
        "cell.finished",
        "cell.started",
    ]


def test_a_finished_cell_cannot_be_finished_twice(personas, session, no_tasks):
    submit(personas, session, "true")
    cell = services.claim_next_cell(session.pk)
    assert services.finish_cell(cell, status=Cell.Status.FINISHED, exit_code=0)
    assert not services.finish_cell(cell, status=Cell.Status.FAILED, exit_code=1)
    cell.refresh_from_db()
    assert cell.status == Cell.Status.FINISHED and cell.duration_ms is not None


def test_cancelling_a_queued_cell_ends_it_at_once(personas, session, no_tasks):
    cell = submit(personas, session, "sleep 100")
    services.cancel_cell(personas.membership(personas.owner), session, cell.pk)
    cell.refresh_from_db()
    assert cell.status == Cell.Status.CANCELLED
    assert services.claim_next_cell(session.pk) is None
    finished = Event.objects.get(session=session, type="cell.finished")
    assert finished.payload["status"] == "cancelled"


def test_cancelling_a_running_cell_asks_the_sandbox(
    personas, session, no_tasks, monkeypatch, django_capture_on_commit_callbacks
):
    killed = []
    monkeypatch.setattr(services, "_kill_command", lambda s, c: killed.append(c.command_id))
    submit(personas, session, "sleep 100")
    cell = services.claim_next_cell(session.pk)
    with django_capture_on_commit_callbacks(execute=True):
        services.cancel_cell(personas.membership(personas.member), session, cell.pk)
    cell.refresh_from_db()
    assert cell.cancel_requested and cell.status == Cell.Status.RUNNING
    assert killed == [cell.command_id]


def test_a_cell_whose_lease_expired_ends_interrupted(
    personas, session, no_tasks, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(services, "_kill_command", lambda s, c: True)
    submit(personas, session, "sleep 100")
    submit(personas, session, "echo next")
    cell = services.claim_next_cell(session.pk)
    services.append_event(session.pk, "cell.output", {"text": "partial\n"}, cell=cell)
    assert services.expire_stale_cells() == []
    later = timezone.now() + dt.timedelta(seconds=120)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.expire_stale_cells(now=later) == [cell.pk]
    cell.refresh_from_db()
    assert cell.status == Cell.Status.INTERRUPTED
    assert "lease expired" in cell.error
    assert cell.output == "partial\n"
    assert no_tasks == [session.pk]  # the next cell gets its turn
    nxt = services.claim_next_cell(session.pk)
    assert nxt is not None and nxt.source == "echo next"


def test_notes_are_done_at_once_and_prompts_say_no_model(personas, session, no_tasks, monkeypatch):
    monkeypatch.setattr(services, "_prompt_task", lambda: None)
    note = submit(personas, session, "# Plan\n<script>alert(1)</script>", kind="note")
    assert note.status == Cell.Status.FINISHED
    prompt = submit(personas, session, "Fix the tests", kind="prompt")
    assert prompt.status == Cell.Status.FAILED
    assert prompt.error == services.NO_MODEL_MESSAGE
    assert no_tasks == []


def test_the_notebook_view_folds_events_into_cells(personas, session, no_tasks):
    submit(personas, session, "printf 'a\\rb\\n'")
    cell = services.claim_next_cell(session.pk)
    services.append_event(session.pk, "cell.output", {"text": "10%\r", "sgr": ""}, cell=cell)
    services.append_event(session.pk, "cell.output", {"text": "100%\n", "sgr": ""}, cell=cell)
    services.finish_cell(cell, status=Cell.Status.FINISHED, outcome="exit", exit_code=0)
    session.refresh_from_db()
    view = notebook.notebook_view(session)
    assert view.last_seq == 5
    [shown] = view.cells
    assert shown.status == "finished" and shown.exit_code == 0
    assert shown.output == "10%\r100%\n"


@pytest.mark.django_db(transaction=True)  # the loop closes stale connections between cells
def test_a_long_queue_is_handed_to_a_fresh_task_before_the_time_limit(
    personas, session, no_tasks, monkeypatch, settings
):
    def run_cell(cell):
        services.finish_cell(cell, status=Cell.Status.FINISHED, outcome="exit", exit_code=0)

    monkeypatch.setattr(services, "run_cell", run_cell)
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 100  # shorter than one command's timeout (600 s)
    submit(personas, session, "echo 1")
    submit(personas, session, "echo 2")
    no_tasks.clear()
    assert services.run_queued_cells(session.pk) == 1
    assert no_tasks == [session.pk]  # the second cell goes to a new task
    assert services.run_queued_cells(session.pk) == 1
