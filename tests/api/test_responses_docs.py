"""The Responses example in docs/api.md runs as written: the openai SDK against Daphne, the
turn in a real worker, the venv in a real container, the model behind the fake server."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.agents.fake_openai import API_KEY, MODEL, FakeOpenAI, Step
from tests.support import ROOT, child_env, test_database_url


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def test_the_responses_example_runs(
    daphne_server: Any, celery_worker: Any, api_key: str, project: Any, fake: FakeOpenAI
) -> None:
    from agentide.agents.models import ModelProvider

    provider = ModelProvider(project=project, kind="responses", base_url=fake.url, model=MODEL)
    provider.set_api_key(API_KEY)
    provider.save()
    fake.add(
        Step(calls=[{"commands": ["python3 -m venv /workspace/venv --without-pip"]}]),
        Step(text="The venv is ready."),
        Step(calls=[{"commands": ["/workspace/venv/bin/python --version"]}]),
        Step(text="It runs Python 3."),
    )
    text = (ROOT / "docs" / "api.md").read_text()
    example = text.split("### Example: a venv", 1)[1]
    code = re.search(r"```python\n(.*?)```", example, re.S)
    assert code is not None
    env = child_env(
        database_url=test_database_url(),
        AGENTIDE_URL=daphne_server.url,
        AGENTIDE_API_KEY=api_key,
        AGENTIDE_MODEL=MODEL,
    )
    result = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "container: cntr_" in result.stdout
    assert "Python 3." in result.stdout
    assert "completed It runs Python 3." in result.stdout
