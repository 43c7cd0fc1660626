"""Forks start from the checkpoint taken before their prompt: a fork from prompt 2 of a
3-prompt session has the files prompt 1 made and none of those prompts 2 and 3 made."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from agentide.events import registry
from agentide.events.models import Event
from agentide.sandboxes.models import Checkpoint
from agentide.sessions import execution
from agentide.sessions import services as notebook
from agentide.sessions.models import Cell
from agentide.transcripts import forks
from agentide.transcripts import tasks as transcript_tasks


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
    provider = ModelProvider(project=project, kind="responses", base_url=fake.url, model=model,
                             price_input=1, price_output=2)
    provider.set_api_key(API_KEY)
    provider.save()
    return project


@pytest.mark.usefixtures("transactional_db")
def test_a_fork_from_prompt_2_starts_without_the_files_prompt_2_created(
    personas: Any, two_models: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from agentide.sandboxes import services as sandboxes
    from tests.agents.fake_openai import Step

    monkeypatch.setattr(execution, "wake_scheduler", lambda session_id: None)
    a, b = two_models
    project_a, project_b = lab(personas, "lab-a", a, "model-a"), lab(personas, "lab-b", b,
                                                                     "model-b")
    member = personas.membership(personas.member)
    original = notebook.create_session(member, project_a, "Original")
    forked = None
    with override_settings(AGENTIDE_CHECKPOINT_DIR=str(tmp_path / "store")):
        try:
            for name in ("one", "two", "three"):
                a.add(Step(text="Writing.", calls=[{"commands": [
                          f"mkdir -p /workspace/.venv && echo {name} > /workspace/{name}.txt"
                          f" && echo env > /workspace/.venv/{name}"]}]),
                      Step(text="Done."))
                prompt = execution.submit_cell(member, original, "prompt", f"Write {name}.")
                assert execution.run_next_cell(original.pk, worker="t") == prompt
                assert Cell.objects.get(pk=prompt.pk).status == "finished"
            second = Cell.objects.get(session=original, position=2)
            for cell in Cell.objects.filter(session=original):
                phases = sorted(Event.objects.filter(cell=cell, type=registry.CELL_CHECKPOINT)
                                .values_list("payload__phase", flat=True))
                assert phases == ["after", "before"]

            fork = forks.fork_session(member, original, 2, project=project_b,
                                      replay=transcript_tasks.replay_fork.delay)
            forked = fork.session
            start = Checkpoint.objects.get(cell=second, phase="before")
            assert Checkpoint.objects.get(pk=start.pk).pinned
            first_event = Event.objects.filter(session=forked).order_by("seq").first()
            assert first_event is not None and first_event.type == registry.WORKSPACE_FORKED
            assert first_event.payload["checkpoint"] == start.pk
            assert ".venv/" in first_event.payload["ignored"]
            assert "were not copied" in first_event.payload["message"]
            # The copied cell's checkpoint events name the fork's own checkpoints.
            copied = Event.objects.filter(session=forked, type=registry.CELL_CHECKPOINT)
            assert copied.count() == 2
            assert all(Checkpoint.objects.get(pk=e.payload["checkpoint"]).session_id
                       == forked.pk for e in copied)

            b.add(Step(text="Looking.", calls=[{"commands": ["ls -A /workspace"]}]),
                  Step(text="Only one."))
            assert forks.replay_fork(forked.pk) == "replayed"
            fork.refresh_from_db()
            assert fork.workspace_copied, fork.workspace_error
            replay = Cell.objects.get(session=forked, position=2)
            assert execution.run_next_cell(forked.pk, worker="t") == replay
            listing = Event.objects.get(session=forked, type=registry.AGENT_OUTPUT)
            # one.txt from before prompt 2; no two.txt, three.txt, and no .venv (ignored).
            names = listing.payload["text"].split()
            assert [n for n in names if n != ".agentide"] == ["one.txt"], names
        finally:
            sandboxes.destroy_sandbox(original)
            if forked is not None:
                sandboxes.destroy_sandbox(forked)
