"""Cells without a sandbox: validation, queueing order, claims, cancel, leases."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from agentide.events import log as event_log
from agentide.events import registry
from agentide.events.models import Event
from agentide.sessions import execution, notebook, services
from agentide.sessions.models import Cell

pytestmark = pytest.mark.django_db


def submit(personas, session, source, kind="shell", who=None):
    return execution.submit_cell(personas.membership(who or personas.member), session, kind, source)


def test_a_shell_cell_is_queued_and_its_task_enqueued_on_commit(
    personas, session, no_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        cell = submit(personas, session, "echo hi")
    assert cell.status == Cell.Status.QUEUED
    assert no_tasks == [session.pk]
    created = Event.objects.get(session=session, type=registry.CELL_CREATED)
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
        execution.cancel_cell(personas.membership(personas.reviewer), session, cell.pk)


def test_cells_are_claimed_one_at_a_time_in_submission_order(personas, session, no_tasks):
    first = submit(personas, session, "echo 1")
    second = submit(personas, session, "echo 2", who=personas.owner)
    claimed = execution.claim_next_cell(session.pk, worker="w1")
    assert claimed is not None and claimed.pk == first.pk
    assert claimed.status == Cell.Status.RUNNING
    # While one runs, nobody claims the next.
    assert execution.claim_next_cell(session.pk, worker="w2") is None
    assert execution.finish_cell(claimed, status=Cell.Status.FINISHED, outcome="exit", exit_code=0)
    nxt = execution.claim_next_cell(session.pk, worker="w2")
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
    cell = execution.claim_next_cell(session.pk)
    assert execution.finish_cell(cell, status=Cell.Status.FINISHED, exit_code=0)
    assert not execution.finish_cell(cell, status=Cell.Status.FAILED, exit_code=1)
    cell.refresh_from_db()
    assert cell.status == Cell.Status.FINISHED and cell.duration_ms is not None


def test_cancelling_a_queued_cell_ends_it_at_once(personas, session, no_tasks):
    cell = submit(personas, session, "sleep 100")
    execution.cancel_cell(personas.membership(personas.owner), session, cell.pk)
    cell.refresh_from_db()
    assert cell.status == Cell.Status.CANCELLED
    assert execution.claim_next_cell(session.pk) is None
    finished = Event.objects.get(session=session, type="cell.finished")
    assert finished.payload["status"] == "cancelled"


def test_cancelling_a_running_cell_asks_the_sandbox(
    personas, session, no_tasks, monkeypatch, django_capture_on_commit_callbacks
):
    killed = []
    monkeypatch.setattr(services, "kill_command", lambda s, c: killed.append(c.command_id))
    submit(personas, session, "sleep 100")
    cell = execution.claim_next_cell(session.pk)
    with django_capture_on_commit_callbacks(execute=True):
        execution.cancel_cell(personas.membership(personas.member), session, cell.pk)
    cell.refresh_from_db()
    assert cell.cancel_requested and cell.status == Cell.Status.RUNNING
    assert killed == [cell.command_id]


def test_a_cell_whose_lease_expired_ends_interrupted(
    personas, session, no_tasks, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(services, "kill_command", lambda s, c: True)
    submit(personas, session, "sleep 100")
    submit(personas, session, "echo next")
    cell = execution.claim_next_cell(session.pk)
    event_log.append_event(session.pk, "cell.output", {"text": "partial\n"}, cell=cell)
    assert execution.expire_stale_cells() == []
    later = timezone.now() + dt.timedelta(seconds=120)
    with django_capture_on_commit_callbacks(execute=True):
        assert execution.expire_stale_cells(now=later) == [cell.pk]
    cell.refresh_from_db()
    assert cell.status == Cell.Status.INTERRUPTED
    assert "lease expired" in cell.error
    assert cell.output == "partial\n"
    assert no_tasks == [session.pk]  # the next cell gets its turn
    nxt = execution.claim_next_cell(session.pk)
    assert nxt is not None and nxt.source == "echo next"


def test_a_queue_whose_wake_up_was_lost_is_woken_by_the_sweep(personas, session, no_tasks):
    # The wake-up on commit never reached a worker (no_tasks records it and sends nothing).
    first = submit(personas, session, "echo first")
    submit(personas, session, "echo second")
    assert execution.wake_idle_queues() == []  # just queued: its wake-up may be in flight
    later = timezone.now() + execution.IDLE_QUEUE_GRACE + dt.timedelta(seconds=1)
    assert execution.wake_idle_queues(now=later) == [session.pk]
    assert no_tasks[-1] == session.pk
    # A session with a running cell is its scheduler's business: not woken.
    assert execution.claim_next_cell(session.pk) == first
    assert execution.wake_idle_queues(now=later) == []


def test_notes_are_done_at_once_and_prompts_say_no_model(personas, session, no_tasks, monkeypatch):
    monkeypatch.delitem(execution.RUNNERS, Cell.Kind.PROMPT, raising=False)  # no agents app
    note = submit(personas, session, "# Plan\n<script>alert(1)</script>", kind="note")
    assert note.status == Cell.Status.FINISHED
    prompt = submit(personas, session, "Fix the tests", kind="prompt")
    assert prompt.status == Cell.Status.FAILED
    assert prompt.error == execution.NO_MODEL_MESSAGE
    assert no_tasks == []


def test_the_notebook_view_folds_events_into_cells(personas, session, no_tasks):
    submit(personas, session, "printf 'a\\rb\\n'")
    cell = execution.claim_next_cell(session.pk)
    event_log.append_event(session.pk, "cell.output", {"text": "10%\r", "sgr": ""}, cell=cell)
    event_log.append_event(session.pk, "cell.output", {"text": "100%\n", "sgr": ""}, cell=cell)
    execution.finish_cell(cell, status=Cell.Status.FINISHED, outcome="exit", exit_code=0)
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
        return execution.CellResult(Cell.Status.FINISHED, outcome="exit", exit_code=0)

    monkeypatch.setitem(execution.RUNNERS, Cell.Kind.SHELL, run_cell)
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 100  # shorter than one command's timeout (600 s)
    submit(personas, session, "echo 1")
    submit(personas, session, "echo 2")
    no_tasks.clear()
    assert execution.run_queued_cells(session.pk) == 1
    assert no_tasks == [session.pk]  # the second cell goes to a new task
    assert execution.run_queued_cells(session.pk) == 1


@pytest.mark.django_db(transaction=True)  # the loop closes stale connections between cells
def test_a_prompt_after_other_cells_gets_a_fresh_task_and_a_shell_cell_does_not(
    personas, session, no_tasks, monkeypatch
):
    ran = []

    def runner(cell):
        ran.append(cell.source)
        return execution.CellResult(Cell.Status.FINISHED, outcome="exit", exit_code=0)

    monkeypatch.setitem(execution.RUNNERS, Cell.Kind.SHELL, runner)
    monkeypatch.setitem(execution.RUNNERS, Cell.Kind.PROMPT, runner)
    for source, kind in (("echo 1", "shell"), ("echo 2", "shell"), ("Go on", "prompt")):
        submit(personas, session, source, kind=kind)
    no_tasks.clear()
    # The shell cells run back to back; the turn, which may take the task's whole time limit,
    # is handed to a new scheduler task (sent at once) rather than started late in this one.
    assert execution.run_queued_cells(session.pk) == 2
    assert ran == ["echo 1", "echo 2"] and no_tasks == [session.pk]
    assert execution.run_queued_cells(session.pk) == 1
    assert ran[-1] == "Go on" and no_tasks == [session.pk]
