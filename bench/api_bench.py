"""``/v1/responses`` figures through the openai SDK against the bench stack's Daphne and worker,
with the zero-latency fake model server of the agent tests (real HTTP on loopback).

- API overhead per shell step: a step (model call asking for a shell call, the command, its
  output back) costs ``(turn with K steps - turn with no tool call) / K``, measured through
  ``client.responses.create`` and through the notebook's own path (``submit_cell``, the same
  worker, the cell's end read from the database), pairs run back to back, interleaved. The
  overhead is the API's per-step cost minus the notebook's: what following the cell and
  folding its events into the SDK's shapes adds per step (the fixed cost of a request cancels
  out of the difference and is shown on its own row).
- Time to the first SSE event: ``client.responses.create(stream=True)`` until the SDK yields
  ``response.created`` (sent before the worker picks the cell up).

    .venv/bin/python bench/api_bench.py            # own stack, prints the rows
    .venv/bin/python bench/run.py --figure api     # as part of the suite
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Row
from bench.stack import ROOT, Fixture, Stack, new_session

sys.path.insert(0, str(ROOT / "tests" / "agents"))

SHELL_REFERENCE = "container_reference"


def _wait_done(cell_id: int, timeout: float = 120) -> None:
    """Wait for the cell's end, reading its status every 2 ms (the read's latency is the
    same for every turn, so it cancels out of a per-step difference)."""
    from agentide.sessions.models import Cell

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if Cell.objects.filter(pk=cell_id, status__in=Cell.DONE).exists():
            return
        time.sleep(0.002)
    raise TimeoutError(f"cell {cell_id} did not finish")


def api_figures(
    stack: Stack, fixture: Fixture, *, turns: int, steps: int, firsts: int
) -> list[Row]:
    import openai
    from fake_openai import API_KEY, MODEL, FakeOpenAI, Step

    from agentide.agents.models import ModelProvider
    from agentide.api.keys import create_key
    from agentide.sandboxes import services as sandboxes
    from agentide.sessions import execution

    made: list[Any] = []
    with FakeOpenAI() as fake:
        provider, _ = ModelProvider.objects.update_or_create(
            project=fixture.project,
            defaults={"kind": "responses", "base_url": fake.url, "model": MODEL},
        )
        provider.set_api_key(API_KEY)
        provider.save()
        _key, secret = create_key(fixture.user, project=fixture.project, name="bench")
        client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=secret, max_retries=0)

        def script(k: int) -> None:
            fake.add(
                *[Step(text="Running it.", calls=[{"commands": ["true"]}]) for _ in range(k)],
                Step(text="Done."),
            )

        session = new_session(fixture, "api bench: notebook")
        made.append(session)

        def notebook_turn(k: int) -> float:
            script(k)
            t = time.perf_counter()
            cell = execution.submit_cell(fixture.membership, session, "prompt", "go")
            _wait_done(cell.pk)
            return (time.perf_counter() - t) * 1000

        tools = [{"type": "shell", "environment": {"type": "container_auto"}}]
        script(1)
        first = client.responses.create(model=MODEL, input="warm up", tools=tools)
        container_id = first.tools[0].environment.container_id  # type: ignore[union-attr]
        from agentide.api.models import ApiResponse

        made.append(ApiResponse.objects.get(public_id=first.id).session)
        tools = [
            {
                "type": "shell",
                "environment": {"type": SHELL_REFERENCE, "container_id": container_id},
            }
        ]

        def api_turn(k: int) -> float:
            script(k)
            t = time.perf_counter()
            response = client.responses.create(model=MODEL, input="go", tools=tools)
            elapsed = (time.perf_counter() - t) * 1000
            assert response.status == "completed", response.error
            return elapsed

        notebook_turn(1)  # warm-up: the sandbox, the worker's connections
        api_turn(1)
        samples: dict[str, list[float]] = {"nb0": [], "nbk": [], "api0": [], "apik": []}
        for _ in range(turns):
            samples["nb0"].append(notebook_turn(0))
            samples["nbk"].append(notebook_turn(steps))
            samples["api0"].append(api_turn(0))
            samples["apik"].append(api_turn(steps))

        firsts_ms: list[float] = []
        for _ in range(firsts):
            fake.add(Step(text="Hi."))
            t = time.perf_counter()
            stream = client.responses.create(model=MODEL, input="hi", tools=tools, stream=True)
            event = next(iter(stream))
            firsts_ms.append((time.perf_counter() - t) * 1000)
            assert event.type == "response.created"
            for _event in stream:  # let the turn end before the next one
                pass
        assert not fake.errors, fake.errors
    for made_session in made:
        sandboxes.destroy_sandbox(made_session)
    nb_step = [(k - z) / steps for z, k in zip(samples["nb0"], samples["nbk"], strict=True)]
    api_step = [(k - z) / steps for z, k in zip(samples["api0"], samples["apik"], strict=True)]
    overhead = [a - n for a, n in zip(api_step, nb_step, strict=True)]
    request = [a - n for a, n in zip(samples["api0"], samples["nb0"], strict=True)]
    return [
        Row("notebook: agent step (prompt cell through the worker)", samples=nb_step),
        Row("API: agent step (responses.create through the worker)", samples=api_step),
        Row(
            "API overhead per shell step (API step - notebook step)",
            samples=overhead,
            target="<= 10 ms",
        ),
        Row("API: fixed cost of a request (text-only turn, API - notebook)", samples=request),
        Row(
            "API: first SSE event (responses.create(stream=True) -> response.created)",
            samples=firsts_ms,
            target="<= 50 ms",
        ),
        Row("API: text-only turn, whole (responses.create)", samples=samples["api0"]),
        Row(f"API: {steps}-step turn, whole (responses.create)", samples=samples["apik"]),
    ]


def main() -> int:
    import argparse

    from bench import stack as bench_stack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--firsts", type=int, default=30)
    args = parser.parse_args()
    stack = bench_stack.Stack(concurrency=4)
    try:
        stack.clear_logs()
        stack.start_redis()
        stack.create_database()
        bench_stack.setup_django()
        stack.start()
        fixture = bench_stack.make_fixture()
        rows = api_figures(stack, fixture, turns=args.turns, steps=args.steps, firsts=args.firsts)
    finally:
        try:
            bench_stack.destroy_sandboxes()
        finally:
            stack.close()
    for row in rows:
        print(row.name, *row.cells(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
