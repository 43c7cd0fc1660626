"""Cells and checkpoints: every shell cell records the checkpoint it started from and ended
at; a restore cell brings a checkpoint back and its own "before" checkpoint undoes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import override_settings

from agentide.events import registry
from agentide.events.models import Event
from agentide.sandboxes import checkpoints
from agentide.sandboxes.models import Checkpoint
from agentide.sessions import execution
from agentide.sessions.models import Cell

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def store(tmp_path: Path) -> Iterator[Path]:
    with override_settings(AGENTIDE_CHECKPOINT_DIR=str(tmp_path / "store")):
        yield tmp_path / "store"
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions.models import Session

    for session in Session.objects.all():
        sandboxes.destroy_sandbox(session)


def run(personas: Any, session: Any, kind: str, source: str) -> Cell:
    cell = execution.submit_cell(personas.membership(personas.member), session, kind, source)
    assert execution.run_next_cell(session.pk, worker="test") == cell
    cell.refresh_from_db()
    return cell


def recorded(cell: Cell) -> dict[str, dict[str, Any]]:
    return {e.payload["phase"]: e.payload
            for e in Event.objects.filter(cell=cell, type=registry.CELL_CHECKPOINT)}


def files(personas: Any, session: Any) -> str:
    cell = run(personas, session, "shell", "cd /workspace && find . -path ./.agentide -prune "
                                           "-o -type f -printf '%p:' -exec cat {} \\; | sort")
    assert cell.status == "finished", cell.output
    return cell.output


def test_a_shell_cell_records_its_before_and_after_checkpoints(
    personas: Any, session: Any, no_tasks: Any
) -> None:
    cell = run(personas, session, "shell", "echo hi > hello.txt; echo written")
    said = recorded(cell)
    assert set(said) == {"before", "after"}
    assert all(p["error"] == "" and p["checkpoint"] for p in said.values())
    before = checkpoints.checkpoint_for_cell(cell.pk, "before")
    after = checkpoints.checkpoint_for_cell(cell.pk, "after")
    assert before is not None and after is not None
    assert (said["before"]["checkpoint"], said["after"]["checkpoint"]) == (before.pk, after.pk)
    diff = checkpoints.diff_checkpoints(before, after)
    assert [c.path for c in diff.added] == ["hello.txt"] and not diff.removed
    assert said["after"]["files"] == 1 and said["after"]["bytes"] == 3
    # The events come in order: before the command started, after it finished.
    kinds = list(Event.objects.filter(cell=cell).order_by("seq").values_list("type", flat=True))
    assert kinds.index(registry.CELL_CHECKPOINT) < kinds.index(registry.CELL_OUTPUT)
    assert kinds[-2:] == [registry.CELL_CHECKPOINT, registry.CELL_FINISHED]


def test_a_restore_cell_brings_files_back_and_its_before_checkpoint_undoes_it(
    personas: Any, session: Any, no_tasks: Any
) -> None:
    first = run(personas, session, "shell", "echo one > a.txt && mkdir d && echo x > d/x")
    saved = checkpoints.checkpoint_for_cell(first.pk, "after")
    assert saved is not None
    run(personas, session, "shell", "rm -r d && echo two > a.txt && echo new > b.txt")
    edited = files(personas, session)

    restore = run(personas, session, "restore", str(saved.pk))
    assert restore.status == "finished", restore.error
    assert files(personas, session) == "./a.txt:one\n./d/x:x\n"
    said = recorded(restore)
    undo = checkpoints.checkpoint_for_cell(restore.pk, "before")
    assert undo is not None and said["before"]["checkpoint"] == undo.pk
    assert said["after"]["checkpoint"]
    created = Event.objects.get(cell=restore, type=registry.CELL_CREATED)
    assert created.actor == personas.member and created.payload["source"] == str(saved.pk)

    run(personas, session, "restore", str(undo.pk))
    assert files(personas, session) == edited

    # A transcript with restore cells exports and imports (as a record: no files come along).
    from agentide.transcripts import exchange

    data = "".join(exchange.export_jsonl(session)).encode()
    imported = exchange.import_jsonl(personas.membership(personas.member), session.project, data)
    assert list(Cell.objects.filter(session=imported, kind="restore")
                .values_list("source", flat=True)) == [str(saved.pk), str(undo.pk)]


def test_restore_cells_take_only_the_sessions_own_checkpoints(
    personas: Any, session: Any, project: Any, no_tasks: Any
) -> None:
    from agentide.sessions.services import create_session

    other = create_session(personas.membership(personas.member), project, "Other")
    cell = run(personas, other, "shell", "true")
    foreign = checkpoints.checkpoint_for_cell(cell.pk, "after")
    assert foreign is not None
    member = personas.membership(personas.member)
    for source in (str(foreign.pk), "nope", "999999"):
        with pytest.raises(ValidationError, match="no such checkpoint"):
            execution.submit_cell(member, session, "restore", source)
    with pytest.raises(PermissionDenied):
        execution.submit_cell(personas.membership(personas.reviewer), other, "restore",
                              str(foreign.pk))
    assert not Cell.objects.filter(kind="restore").exists()


def test_a_project_without_checkpoints_records_none(
    personas: Any, session: Any, project: Any, no_tasks: Any
) -> None:
    project.checkpoints_enabled = False
    project.save()
    cell = run(personas, session, "shell", "echo hi")
    assert cell.status == "finished"
    assert recorded(cell) == {}
    assert not Checkpoint.objects.exists()


def test_a_refused_sandbox_start_is_said_once_and_nothing_is_checkpointed(
    personas: Any, session: Any, no_tasks: Any
) -> None:
    from agentide.quotas.services import quota_for

    cell = execution.submit_cell(personas.membership(personas.member), session, "shell", "true")
    quota = quota_for(personas.team)
    quota.suspended = True
    quota.save()
    assert execution.run_next_cell(session.pk, worker="test") == cell
    cell.refresh_from_db()
    assert cell.status == "failed" and "could not run this command" in cell.error
    assert Event.objects.filter(session=session, type=registry.QUOTA_EXCEEDED).count() == 1
    said = recorded(cell)
    assert said["before"]["checkpoint"] is None and "could not start" in said["before"]["error"]
    assert said["after"]["checkpoint"] is None and "not running" in said["after"]["error"]
    assert not Checkpoint.objects.exists()
