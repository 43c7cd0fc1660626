"""Agent step overhead with a zero-latency model: the fake OpenAI-compatible server of the
agent tests (real HTTP on loopback, the real ``openai`` SDK as client, no sleeps), a real
sandbox, the real event log.

A step is one model call that asks for a shell call, the command, and its output back. Its
cost is measured as (turn with K steps - turn with no tool call) / K, pairing turns run
back to back, and the overhead as
that minus a bare ``run_command("true")`` in the same sandbox: what AgentIDE adds per step
around the command itself (model request and streamed response parsing, events, transcript).
Turns run in this process (as the session's scheduler task would run them); wake-ups of
the scheduler are switched off so the bench stack's worker does not race for the cells.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from typing import Any

from bench.report import Row
from bench.stack import ROOT, Fixture, new_session

sys.path.insert(0, str(ROOT / "tests" / "agents"))


def _noop(*args: Any) -> None:
    return None


def agent_steps(fixture: Fixture, turns: int, steps: int) -> list[Row]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from fake_openai import API_KEY, MODEL, FakeOpenAI, Step

    from agentide.agents.models import ModelProvider
    from agentide.quotas.services import sandbox_admission
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions import execution

    saved = execution.wake_scheduler
    execution.wake_scheduler = _noop  # type: ignore[assignment]
    made: list[Any] = []
    queries: dict[int, list[int]] = {}  # steps -> queries of the turn's own connection
    appends: dict[int, list[int]] = {}  # steps -> event appends (session seq locks)
    try:
        with FakeOpenAI() as fake:
            provider = ModelProvider(project=fixture.project, kind="responses",
                                     base_url=fake.url, model=MODEL)
            provider.set_api_key(API_KEY)
            provider.save()

            def turn(k: int) -> float:
                session = new_session(fixture, f"agent {k}")
                made.append(session)
                sandboxes.run_command(session, "true", command_id=uuid.uuid4().hex,
                                      timeout_s=30, on_output=_noop,  # sandbox up, runner open
                                      admission=sandbox_admission(session))
                fake.add(*[Step(text="Running it.", calls=[{"commands": ["true"]}])
                           for _ in range(k)], Step(text="Done."))
                cell = execution.submit_cell(fixture.membership, session, "prompt", "go")
                with CaptureQueriesContext(connection) as captured:
                    t = time.perf_counter()
                    assert execution.run_next_cell(session.pk, worker="bench") == cell
                    elapsed = (time.perf_counter() - t) * 1000
                sql = [q["sql"] for q in captured.captured_queries]
                queries.setdefault(k, []).append(len(sql))
                appends.setdefault(k, []).append(
                    sum(s.startswith('UPDATE "notebook_session" SET "last_seq"') for s in sql))
                cell.refresh_from_db()
                assert cell.status == "finished", (cell.status, cell.error)
                return elapsed

            def bare(session: Any) -> float:
                t = time.perf_counter()
                sandboxes.run_command(session, "true", command_id=uuid.uuid4().hex,
                                      timeout_s=30, on_output=_noop,
                                      admission=sandbox_admission(session))
                return (time.perf_counter() - t) * 1000

            turn(0)  # warm-up: the SDK client, imports, first connections
            turn(1)
            text_only: list[float] = []
            with_steps: list[float] = []
            for _ in range(turns):  # interleaved, so both see the same machine load
                text_only.append(turn(0))
                with_steps.append(turn(steps))
            commands = [bare(made[-1]) for _ in range(steps * turns)]
            assert not fake.errors, fake.errors
    finally:
        execution.wake_scheduler = saved  # type: ignore[assignment]
        for session in made:
            sandboxes.destroy_sandbox(session)
    per_step = [(k - t) / steps for t, k in zip(text_only, with_steps, strict=True)]
    command = statistics.median(commands)
    overhead = [s - command for s in per_step]

    def per_step_count(counts: dict[int, list[int]]) -> list[float]:
        return [(k - t) / steps for t, k in zip(counts[0][-turns:], counts[steps], strict=True)]

    return [
        Row("agent turn, text only (1 model call)", samples=text_only),
        Row(f"agent step (model call + shell call + result), from {steps}-step turns",
            samples=per_step),
        Row("bare run_command(\"true\") in the same sandbox", samples=commands),
        Row("agent step overhead (step - bare command)", samples=overhead,
            target="<= 20 ms"),
        Row("agent step: database queries (the turn's connection)", unit="",
            samples=per_step_count(queries)),
        Row("agent step: event appends (one transaction each)", unit="",
            samples=per_step_count(appends)),
    ]
