"""The benchmark and fault-drill suite of AgentIDE's live path: one entry point.

    .venv/bin/python bench/run.py              # full: every figure and every drill
    .venv/bin/python bench/run.py --smoke      # small counts, two drills, < 2 minutes
    .venv/bin/python bench/run.py --no-drills  # figures only
    .venv/bin/python bench/run.py --only-drills

It runs from a snapshot of HEAD (``git archive`` into ``var/bench/src/<commit>``: other
people commit to this checkout while a run takes minutes, and every process of a run must
load the same code; ``--working-tree`` runs the checkout as it is). It starts a private
stack (Redis on 127.0.0.1:6391, PostgreSQL database ``agentide_bench``, Daphne, a prefork
Celery worker, beat for the drills; see ``bench/stack.py``), measures, runs the drills,
prints the table, writes ``bench/results/<UTC date>.md`` (``--smoke`` writes
``<date>-smoke.md``), and stops everything it started. Numbers are printed, never asserted;
the exit status is 1 only when a drill lost events, duplicated them, left a cell stuck or
did not recover.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import stack as bench_stack
from bench.report import Row, machine, table

RESULTS = Path(os.environ.get("AGENTIDE_BENCH_RESULTS")
               or Path(__file__).resolve().parent / "results")
# Set when this process runs from a snapshot of a commit (the commit's id).
SNAPSHOT_ENV = "AGENTIDE_BENCH_COMMIT"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small counts, < 2 minutes")
    parser.add_argument("--no-drills", action="store_true", help="figures only")
    parser.add_argument("--only-drills", action="store_true", help="drills only")
    parser.add_argument("--drill", action="append", default=[],
                        help="run only this drill (repeatable): " + ", ".join(DRILL_NAMES))
    parser.add_argument("--figure", action="append", default=[],
                        help="measure only this figure (repeatable): " + ", ".join(FIGURES))
    parser.add_argument("--working-tree", action="store_true",
                        help="run the checkout as it is instead of a snapshot of HEAD")
    parser.add_argument("--no-write", action="store_true", help="do not write a results file")
    parser.add_argument("--output", type=Path,
                        help="write the results here instead of bench/results/<date>.md")
    return parser.parse_args()


DRILL_NAMES = ["worker-kill", "redis-restart", "daphne-restart", "sandbox-kill",
               "engine-restart"]
SMOKE_DRILLS = ["daphne-restart", "sandbox-kill"]
FIGURES = ["session-start", "round-trip", "page", "flood", "agent", "line-latency", "fan-out",
           "api"]


def figures(
    stack: bench_stack.Stack, fixture: bench_stack.Fixture, smoke: bool, only: list[str]
) -> list[Row]:
    from bench import agent_bench, api_bench, notebook_bench, page_bench

    rows: list[Row] = []
    steps: list[tuple[str, object]] = [
        ("session-start", lambda: notebook_bench.session_start(fixture, 2 if smoke else 10)),
        ("round-trip", lambda: page_bench.composer_round_trip(
            stack, fixture, n=10 if smoke else 100, warmup=3 if smoke else 20)),
        ("page", lambda: page_bench.page_load(
            stack, fixture, cells=500 if smoke else 5000, repeats=2 if smoke else 5)),
        ("flood", lambda: asyncio.run(notebook_bench.flood(
            stack, fixture, megabytes=50, repeats=1 if smoke else 3))),
        ("agent", lambda: agent_bench.agent_steps(
            fixture, turns=2 if smoke else 5, steps=3 if smoke else 10)),
        ("line-latency", lambda: asyncio.run(notebook_bench.line_latency(
            stack, fixture, levels=[1, 4] if smoke else [1, 10, 20], viewers_per_session=3,
            lines=10 if smoke else 50, interval_s=0.1))),
        ("fan-out", lambda: asyncio.run(notebook_bench.fan_out(
            stack, fixture, joining=10 if smoke else 100, settled=20 if smoke else 200,
            lines=10 if smoke else 50, interval_s=0.1))),
        ("api", lambda: api_bench.api_figures(
            stack, fixture, turns=2 if smoke else 5, steps=3 if smoke else 10,
            firsts=10 if smoke else 30)),
    ]
    for name, measure in steps:
        if only and name not in only:
            continue
        t = time.perf_counter()
        try:
            got = measure()  # type: ignore[operator]
        except Exception:
            traceback.print_exc()
            got = [Row(f"{name}: FAILED", value="error", note="see the log above")]
        print(f"-- {name}: {time.perf_counter() - t:.1f} s", flush=True)
        for row in got:
            print("   ", row.name, *row.cells(), flush=True)
        rows += got
    return rows


def run_drills(
    stack: bench_stack.Stack, fixture: bench_stack.Fixture, names: list[str], smoke: bool
) -> list[object]:
    from bench.drills import DRILLS, DrillResult

    # Drills restart the worker: a smaller pool restarts faster. A short lease makes a
    # killed worker's cell expire within seconds; beat schedules the expiry every second.
    stack.concurrency, stack.lease_s = 4, 4
    if stack.worker is not None:
        stack.worker.stop()
    stack.start_worker()
    stack.start_beat(every_s=1.0)
    results: list[object] = []
    for name in names:
        t = time.perf_counter()
        try:
            result = DRILLS[name](stack, fixture, smoke)
        except Exception as exc:
            traceback.print_exc()
            result = DrillResult(name, ok=False, notes=f"the drill itself failed: {exc!r}")
        print(f"-- drill {name}: {time.perf_counter() - t:.1f} s: {result.line()}", flush=True)
        results.append(result)
    return results


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # Turn SIGTERM into an exception in the main thread, so the finally below stops the
    # processes this run started.
    raise SystemExit(128 + signum)


def run_from_snapshot() -> None:
    """Re-run this command from an export of HEAD (``git archive``) and never return.

    Several people commit to this checkout while a run takes minutes; every process of the
    run (and each restart in a drill) must load the same code, and the results name it.
    """
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                            text=True, check=True).stdout.strip()
    dest = bench_stack.VAR / "src" / commit[:12]
    for old in dest.parent.glob("*"):  # one run at a time (the Redis port): keep only this
        if old != dest:
            subprocess.run(["rm", "-rf", str(old)], check=True)
    if not dest.exists():
        partial = dest.with_name(dest.name + ".partial")
        subprocess.run(["rm", "-rf", str(partial)], check=True)
        partial.mkdir(parents=True)
        archive = subprocess.Popen(["git", "archive", commit], cwd=root, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(partial)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise SystemExit("git archive failed")
        partial.rename(dest)
    env = {**os.environ, SNAPSHOT_ENV: commit, "AGENTIDE_BENCH_RESULTS": str(RESULTS),
           "AGENTIDE_BENCH_VAR": str(bench_stack.VAR)}
    print(f"running from a snapshot of {commit[:12]} in {dest}", flush=True)
    os.execve(sys.executable, [sys.executable, str(dest / "bench" / "run.py"), *sys.argv[1:]],
              env)


def main() -> int:
    args = parse_args()
    if not args.working_tree and not os.environ.get(SNAPSHOT_ENV):
        run_from_snapshot()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = time.perf_counter()
    when = dt.datetime.now(dt.UTC)
    details = machine()
    details["git commit"] = os.environ.get(SNAPSHOT_ENV, "")[:12] or (
        details["git commit"] + " + working tree")
    mode = "smoke" if args.smoke else "full"
    drills = args.drill or (SMOKE_DRILLS if args.smoke else DRILL_NAMES)
    if args.no_drills:
        drills = []
    stack = bench_stack.Stack(concurrency=8 if args.smoke else 24)
    rows: list[Row] = []
    drill_results: list[object] = []
    try:
        stack.clear_logs()
        stack.start_redis()
        stack.create_database()
        bench_stack.setup_django()
        stack.start()
        fixture = bench_stack.make_fixture()
        print(f"stack up in {time.perf_counter() - started:.1f} s ({stack.url})", flush=True)
        if not args.only_drills:
            rows = figures(stack, fixture, args.smoke, args.figure)
        if drills:
            drill_results = run_drills(stack, fixture, drills, args.smoke)
    finally:
        try:
            bench_stack.destroy_sandboxes()
        finally:
            stack.close()
    elapsed = time.perf_counter() - started
    text = render(rows, drill_results, details, when, mode, elapsed)
    print()
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        path = args.output or RESULTS / f"{when:%Y-%m-%d}{'-smoke' if args.smoke else ''}.md"
        path.write_text(text + "\n")
        print(f"written to {path}")
    return 0 if all(getattr(r, "ok", False) for r in drill_results) else 1


def render(
    rows: list[Row], drill_results: list[object], details: dict[str, str], when: dt.datetime,
    mode: str, elapsed: float,
) -> str:
    from bench.drills import drill_table

    argv = " ".join(["bench/run.py", *sys.argv[1:]])
    parts = [
        f"# Bench results, {when:%Y-%m-%d %H:%M} UTC ({mode})",
        "",
        f"Command: `.venv/bin/python {argv}` — took {elapsed / 60:.1f} min.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in details.items()) + ".",
        "",
        "The machine is shared with other developers' test runs while this ran: absolute "
        "numbers are noisy, side-by-side ones (same run) are comparable.",
    ]
    if rows:
        parts += ["", "## Figures", "", table(rows)]
    if drill_results:
        parts += ["", "## Fault drills", "", drill_table(drill_results)]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
