"""Fork and replay: the earlier history copied, the workspace copied through the sandbox
backend, the later prompts re-run against another project's model, the comparison."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from agentide.events.models import Event
from agentide.sessions import execution
from agentide.sessions import services as notebook
from agentide.sessions.models import Cell
from agentide.transcripts import forks
from agentide.transcripts import tasks as transcript_tasks
from agentide.transcripts.models import Fork
from tests.support import ARTIFACTS


@pytest.fixture
def replays(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record replay task enqueues instead of sending them to the broker."""
    from agentide.transcripts import tasks

    sent: list[int] = []
    monkeypatch.setattr(tasks.replay_fork, "delay", sent.append)
    return sent


@pytest.fixture
def prompts_sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record wake-ups of sessions' schedulers instead of sending the task to the broker."""
    sent: list[int] = []
    monkeypatch.setattr(execution, "wake_scheduler", sent.append)
    return sent


@pytest.mark.django_db
def test_a_fork_copies_the_history_before_the_prompt(
    personas: Any,
    rich_session: Any,
    replays: list[int],
    prompts_sent: list[int],
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    member = personas.membership(personas.member)
    fork = forks.fork_session(member, rich_session, 5, replay=transcript_tasks.replay_fork.delay)
    forked = fork.session
    assert replays == [forked.pk] or replays == []  # sent on commit (none inside a test txn)
    assert forked.title == "Debugging prod · fork at #5"
    assert list(Cell.objects.filter(session=forked).values_list("position", "status")) == [
        (1, "finished"),
        (2, "failed"),
        (3, "cancelled"),
        (4, "finished"),
    ]
    types = list(Event.objects.filter(session=forked).values_list("type", flat=True))
    assert "cell.output" in types and "sandbox.state" in types and "error" in types
    assert not any(t.startswith(("agent.", "annotation.")) for t in types)
    assert list(Event.objects.filter(session=forked).values_list("seq", flat=True)) == list(
        range(1, len(types) + 1)
    )
    originals = Cell.objects.filter(session=rich_session, position__lt=5).order_by("position")
    copies = Cell.objects.filter(session=forked).order_by("position")
    assert [c.created_at for c in copies] == [c.created_at for c in originals]
    copied = Event.objects.get(session=forked, type="cell.finished", cell__position=2)
    assert copied.payload["cell_id"] == copied.cell_id and copied.payload["exit_code"] == 2

    # The replay task: no workspace to copy here (recorded), the prompt re-submitted.
    from agentide.sandboxes import services as sandboxes
    from agentide.sandboxes.backends.base import SandboxError

    def no_copy(source: Any, target: Any, **kwargs: Any) -> None:
        raise SandboxError("The original session has no workspace to copy.", permanent=True)

    monkeypatch.setattr(sandboxes, "copy_workspace", no_copy)
    with django_capture_on_commit_callbacks(execute=True):
        assert forks.replay_fork(forked.pk) == "replayed"
    assert forks.replay_fork(forked.pk) == "skipped"
    fork.refresh_from_db()
    assert fork.workspace_error == "The original session has no workspace to copy."
    (replayed,) = Cell.objects.filter(session=forked, kind="prompt")
    assert replayed.source == "Why does ls fail?" and replayed.position == 5
    assert prompts_sent == [forked.pk]  # the fork's scheduler runs the prompt


@pytest.mark.django_db
def test_fork_permissions(client: Any, personas: Any, rich_session: Any, replays: Any) -> None:
    url = reverse("fork_create", args=[rich_session.pk, 5])
    client.force_login(personas.reviewer)
    assert client.get(url).status_code == 403
    assert client.post(url, {"project": rich_session.project_id}).status_code == 403
    with pytest.raises(PermissionDenied):
        forks.fork_session(
            personas.membership(personas.reviewer),
            rich_session,
            5,
            replay=transcript_tasks.replay_fork.delay,
        )
    client.force_login(personas.outsider)
    assert client.get(url).status_code == 404
    client.force_login(personas.member)
    assert client.get(reverse("fork_create", args=[rich_session.pk, 1])).status_code == 200
    assert (
        client.post(
            reverse("fork_create", args=[rich_session.pk, 1]), {"project": rich_session.project_id}
        ).status_code
        == 404
    )  # cell 1 is no prompt
    response = client.post(url, {"project": rich_session.project_id, "title": "Try B"})
    assert response.status_code == 302
    fork = Fork.objects.get(session__title="Try B")
    assert response["Location"] == reverse("fork_compare", args=[fork.session_id])
    for who, status in [("reviewer", 200), ("outsider", 404)]:
        client.force_login(getattr(personas, who))
        assert client.get(response["Location"]).status_code == status
    client.force_login(personas.reviewer)
    body = client.get(reverse("transcript_detail", args=[rich_session.pk])).content.decode()
    assert "Fork from here" not in body
    assert f'href="{response["Location"]}">Try B</a>' in body  # the source lists its forks
    forked = client.get(reverse("transcript_detail", args=[fork.session_id])).content.decode()
    assert reverse("fork_compare", args=[fork.session_id]) in forked
    client.force_login(personas.member)
    body = client.get(reverse("transcript_detail", args=[rich_session.pk])).content.decode()
    assert url in body


# --- end to end: real sandbox, two fake models over HTTP ------------------------------------


@pytest.fixture
def two_models() -> Iterator[tuple[Any, Any]]:
    from tests.agents.fake_openai import FakeOpenAI

    with FakeOpenAI(models=("model-a",)) as a, FakeOpenAI(models=("model-b",)) as b:
        yield a, b


def lab(personas: Any, slug: str, fake: Any, model: str) -> Any:
    from agentide.agents.models import ModelProvider
    from agentide.projects.models import Project
    from tests.agents.fake_openai import API_KEY

    project = Project.objects.create(team=personas.team, name=slug.title(), slug=slug)
    provider = ModelProvider(
        project=project,
        kind="responses",
        base_url=fake.url,
        model=model,
        price_input=1,
        price_output=2,
    )
    provider.set_api_key(API_KEY)
    provider.save()
    return project


@pytest.mark.usefixtures("transactional_db")
def test_replay_against_a_second_model_starts_from_a_copy_of_the_workspace(
    personas: Any,
    two_models: tuple[Any, Any],
    prompts_sent: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentide.sandboxes import services as sandboxes
    from tests.agents.fake_openai import Step

    a, b = two_models
    project_a, project_b = (
        lab(personas, "lab-a", a, "model-a"),
        lab(personas, "lab-b", b, "model-b"),
    )
    member = personas.membership(personas.member)
    original = notebook.create_session(member, project_a, "Original")
    forked = None
    try:
        execution.submit_cell(member, original, "shell", "echo from-before > /workspace/note.txt")
        assert execution.run_queued_cells(original.pk) == 1
        a.add(
            Step(text="Counting.", calls=[{"commands": ["wc -c /workspace/note.txt"]}]),
            Step(text="It has **12** bytes."),
        )
        prompt = execution.submit_cell(member, original, "prompt", "How big is note.txt?")
        assert execution.run_next_cell(original.pk, worker="t") == prompt

        fork = forks.fork_session(
            member,
            original,
            prompt.position,
            project=project_b,
            replay=transcript_tasks.replay_fork.delay,
        )
        forked = fork.session
        b.add(
            Step(text="Reading it.", calls=[{"commands": ["cat /workspace/note.txt", "false"]}]),
            Step(text="It says from-before."),
        )
        assert forks.replay_fork(forked.pk) == "replayed"
        fork.refresh_from_db()
        assert fork.workspace_copied, fork.workspace_error
        (replay,) = Cell.objects.filter(session=forked, kind="prompt")
        assert execution.run_next_cell(forked.pk, worker="t") == replay

        comparison = forks.compare_fork(fork)
        (pair,) = comparison.pairs
        assert comparison.original_model == "model-a"
        assert comparison.replay_model == "model-b"
        assert [(c.command, c.exit_code) for c in pair.original.commands] == [
            ("wc -c /workspace/note.txt", 0)
        ]
        assert [(c.command, c.exit_code) for c in pair.replay.commands] == [
            ("cat /workspace/note.txt", 0),
            ("false", 1),
        ]
        output = "".join(t for _, t in pair.replay.commands[0].output.shown)
        assert output == "from-before\n"  # the copied workspace
        assert pair.replay.block is not None and pair.replay.block.answer == "It says from-before."
        assert comparison.totals["replay"]["output_tokens"] > 0
        assert comparison.totals["replay"]["cost"] > 0

        client = Client()
        client.force_login(personas.reviewer)
        page = client.get(reverse("fork_compare", args=[forked.pk])).content.decode()
        assert "Original: model-a" in page and "Replay: model-b" in page
        assert "$ wc -c /workspace/note.txt" in page and "$ false" in page
        assert "exit 1" in page and "It says from-before." in page
        assert "The workspace was copied." in page
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "comparison.html").write_text(page)
    finally:
        sandboxes.destroy_sandbox(original)
        if forked is not None:
            sandboxes.destroy_sandbox(forked)


@pytest.mark.usefixtures("transactional_db")
def test_the_fork_page_replays_through_the_worker(
    client: Any, personas: Any, two_models: tuple[Any, Any], celery_worker: Any
) -> None:
    """The whole path as users take it: the fork form, the replay task and the agent's
    prompt task on a real Celery worker, a real sandbox, then the comparison page."""
    from agentide.sandboxes import services as sandboxes
    from tests.agents.fake_openai import Step
    from tests.support import wait_until

    a, b = two_models
    project_a, project_b = (
        lab(personas, "lab-a", a, "model-a"),
        lab(personas, "lab-b", b, "model-b"),
    )
    member = personas.membership(personas.member)
    original = notebook.create_session(member, project_a, "Original")
    a.add(
        Step(text="Writing.", calls=[{"commands": ["echo kept > /workspace/kept.txt"]}]),
        Step(text="Done."),
    )
    prompt = execution.submit_cell(member, original, "prompt", "Write kept.txt")

    def finished(cell_id: int) -> bool:
        cell = Cell.objects.get(pk=cell_id)
        assert cell.status not in ("failed", "cancelled", "interrupted"), cell.error
        return cell.status == "finished"

    forked = None
    try:
        wait_until(lambda: finished(prompt.pk), timeout=90, what="the original turn")
        b.add(
            Step(text="Checking.", calls=[{"commands": ["cat /workspace/kept.txt"]}]),
            Step(text="It is there."),
        )
        client.force_login(personas.member)
        response = client.post(
            reverse("fork_create", args=[original.pk, prompt.position]),
            {"project": project_b.pk, "title": "On model B"},
        )
        assert response.status_code == 302
        fork = Fork.objects.get(session__title="On model B")
        forked = fork.session
        replay = wait_until(
            lambda: Cell.objects.filter(session=forked, kind="prompt").first(),
            timeout=60,
            what="the replayed prompt",
        )
        wait_until(lambda: finished(replay.pk), timeout=90, what="the replayed turn")
        page = client.get(response["Location"]).content.decode()
        assert "Replay: model-b" in page and "$ cat /workspace/kept.txt" in page
        assert "exit 1" in page and "It is there." in page
        # The fork starts from the files as they were before the prompt: without kept.txt.
        output = "".join(e.payload["text"] for e in Event.objects.filter(
            session=forked, type="agent.output"))
        assert "No such file" in output
    finally:
        sandboxes.destroy_sandbox(original)
        if forked is not None:
            sandboxes.destroy_sandbox(forked)
