"""Workspace checkpoints (issue 14): prints numbers, asserts nothing.

    .venv/bin/python bench/checkpoint_bench.py            # 5,000 files / 200 MB, 30 cells
    .venv/bin/python bench/checkpoint_bench.py --smoke    # 500 files / 20 MB, 5 cells
    .venv/bin/python bench/checkpoint_bench.py --output bench/results/<date>-checkpoints.md

On the real Docker engine with the sandbox image, a PostgreSQL database of its own
(``agentide_checkpoint_bench``, dropped and re-created per run) and the shared Redis under a
prefix of its own, it fills a session's /workspace with ``--files`` files of ``--megabytes``
in total (incompressible bytes; one in five files is text), then runs ``--cells`` cells that
each change one file (a line of a text file, or a binary file rewritten whole, in turn) and
measures what the product does around each cell, calling the same functions the worker calls
(``agentide.sandboxes.checkpoints``):

- checkpoint: ``take_checkpoint`` after each cell (p50 / p90), and of an unchanged workspace;
  the first checkpoint (everything read) on its own line;
- storage growth per checkpoint (``checkpoint_bytes`` after - before) against the bytes of
  the file the cell changed;
- diff: ``diff_checkpoints`` of each cell's before and after checkpoints;
- restore: ``restore_checkpoint`` of the whole 200 MB into an emptied workspace, and of a
  one-file change (each includes the undo checkpoint it takes first);
- fork start: a new session's workspace from a checkpoint (``populate_from_checkpoint``,
  its sandbox created on the way), and to its first command answering.

Targets (issue 14): checkpoint <= 100 ms p50, growth ~ the changed bytes, diff <= 50 ms,
restore of 200 MB <= 2 s, fork start <= 1 s. Containers carry the site label
``agentide-ckbench`` and are removed at the end, with the store and the database.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Row, machine, table
from bench.stack import PG_ADMIN_URL, PYTHON, ROOT, VAR, make_fixture, new_session
from tests.support import child_env

DB_NAME = "agentide_checkpoint_bench"
SITE = "agentide-ckbench"
WORK = VAR / "checkpoints"

# Written into the sandbox and run there: ``files`` files of ``total`` bytes in all, under
# 50 directories; every fifth file is text (lines of hex words, so a line can change), the
# rest random bytes (nothing compresses or deduplicates by accident).
GENERATOR = r"""
import os, sys
files, total = int(sys.argv[1]), int(sys.argv[2])
size = total // files
root = "/workspace/data"
for d in range(50):
    os.makedirs(f"{root}/d{d:02d}", exist_ok=True)
for i in range(files):
    path = f"{root}/d{i % 50:02d}/f{i:05d}"
    if i % 5 == 0:
        lines, n = [], 0
        while n < size:
            line = os.urandom(32).hex() + "\n"
            lines.append(line)
            n += len(line)
        with open(path + ".txt", "w") as f:
            f.write("".join(lines))
    else:
        with open(path + ".bin", "wb") as f:
            f.write(os.urandom(size))
print("ok")
"""

# One cell's change: a line of text file ``i`` replaced, or binary file ``i`` rewritten.
TEXT_EDIT = (
    "python3 -c \"import os,sys; p=sys.argv[1]; t=open(p).read().split(chr(10)); "
    "t[3]=os.urandom(32).hex(); open(p,'w').write(chr(10).join(t))\" {path}"
)
BINARY_EDIT = "head -c {size} /dev/urandom > {path}"


def database_url() -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME


def bench_env() -> dict[str, str]:
    return child_env(
        database_url=database_url(), settings_module="agentide.settings",
        AGENTIDE_VAR_DIR=str(WORK / "var"), AGENTIDE_CHECKPOINT_DIR=str(WORK / "store"),
        AGENTIDE_REDIS_PREFIX=f"ckbench-{uuid.uuid4().hex[:8]}",
        AGENTIDE_SANDBOX_SITE=SITE, AGENTIDE_SANDBOX_WARM_POOL_SIZE="0",
        AGENTIDE_TEST_FAST_HASHER="1", PYTHONPATH=str(ROOT),
    )


def create_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    subprocess.run([PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT,
                   env=bench_env(), check=True, timeout=300)


def drop_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


class Workspace:
    """The bench's session: commands in its sandbox, checkpoints of its /workspace."""

    def __init__(self, session: Any) -> None:
        from agentide.quotas.services import sandbox_admission

        self.session = session
        self.admission = sandbox_admission(session)

    def run(self, command: str, timeout_s: float = 600) -> str:
        from agentide.sandboxes import services as sandboxes

        out: list[bytes] = []
        result = sandboxes.run_command(
            self.session, command, command_id=uuid.uuid4().hex, admission=self.admission,
            timeout_s=timeout_s, on_output=lambda stream, data: out.append(data),
        )
        text = b"".join(out).decode(errors="replace")
        if result.exit_code != 0:
            raise RuntimeError(f"{command[:80]!r} failed ({result}): {text[-2000:]}")
        return text

    def checkpoint(self, reason: str) -> Any:
        from agentide.sandboxes import checkpoints

        result = checkpoints.take_checkpoint(self.session, admission=self.admission,
                                             reason=reason)
        checkpoint = getattr(result, "checkpoint", result)
        if checkpoint is None:
            raise RuntimeError(f"no checkpoint: {getattr(result, 'error', result)!r}")
        return checkpoint

    def stored_bytes(self) -> int:
        from agentide.sandboxes import checkpoints

        return int(checkpoints.checkpoint_bytes(self.session))


def measure(files: int, megabytes: int, cells: int) -> list[Row]:
    from agentide.sandboxes import checkpoints

    fixture = make_fixture("ckbench")
    ws = Workspace(new_session(fixture, "checkpoint bench"))
    total = megabytes * 1024 * 1024
    size = total // files
    rows: list[Row] = []

    ws.run("true")  # the sandbox up and its runner open, as before any cell
    generator = "/tmp/generate.py"
    ws.run(f"cat > {generator} <<'EOF'\n{GENERATOR}\nEOF")
    ms, _ = timed(lambda: ws.run(f"python3 {generator} {files} {total}"))
    print(f"workspace: {files} files, {megabytes} MB written in {ms / 1000:.1f} s", flush=True)
    print(ws.run("du -sm /workspace; find /workspace -type f | wc -l").strip(), flush=True)

    stored = ws.stored_bytes()
    ms, first = timed(lambda: ws.checkpoint("bench: first"))
    grew = ws.stored_bytes() - stored
    rows.append(Row("first checkpoint (every file read)", samples=[ms],
                    note=f"store grew {grew / 1e6:.1f} MB for {total / 1e6:.1f} MB"))

    unchanged = []
    previous = first
    for _ in range(max(3, cells // 3)):
        ms, previous = timed(lambda: ws.checkpoint("bench: unchanged"))
        unchanged.append(ms)
    rows.append(Row("checkpoint, nothing changed", samples=unchanged))

    took, growth, ratio, diffs = [], [], [], []
    changed_total = grown_total = 0
    for i in range(cells):
        # Text files are those whose number is a multiple of 5: even cells edit one line of
        # one, odd cells rewrite a binary file; each cell a different file.
        index = (35 * i) % (files - files % 5) + (i % 2)
        path = f"/workspace/data/d{index % 50:02d}/f{index:05d}"
        if i % 2 == 0:
            ws.run(TEXT_EDIT.format(path=path + ".txt"))
        else:
            ws.run(BINARY_EDIT.format(size=size, path=path + ".bin"))
        before = ws.stored_bytes()
        ms, current = timed(lambda i=i: ws.checkpoint(f"bench: cell {i}"))
        took.append(ms)
        grown = ws.stored_bytes() - before
        growth.append(grown / 1024)
        changed_total += size
        grown_total += grown
        ratio.append(grown / size)
        ms, diff = timed(lambda previous=previous, current=current:
                         checkpoints.diff_checkpoints(previous, current))
        diffs.append(ms)
        counts = (len(diff.added), len(diff.removed), len(diff.changed))
        if counts != (0, 0, 1):
            print(f"cell {i}: expected one changed file, the diff says +{counts[0]} "
                  f"-{counts[1]} ~{counts[2]}", flush=True)
        previous = current
    rows.append(Row("checkpoint after a cell changing 1 file", samples=took,
                    target="<= 100 ms p50"))
    rows.append(Row("storage growth per checkpoint", unit="KiB", samples=growth,
                    note=f"changed file {size / 1024:.0f} KiB; the rest is what changed of "
                         f"the manifest ({previous.files} entries)"))
    rows.append(Row("storage growth / changed bytes", unit="x", samples=ratio,
                    target="~1x",
                    note=f"{grown_total / 1e6:.2f} MB stored for {changed_total / 1e6:.2f} MB "
                         "changed"))
    rows.append(Row("diff of one cell (1 file changed)", samples=diffs, target="<= 50 ms"))
    ms, full = timed(lambda: checkpoints.diff_checkpoints(None, previous))
    rows.append(Row("diff against nothing (every file added)", samples=[ms],
                    note=f"{len(full.added)} entries"))

    # Restore: a one-file change, then the whole workspace into an emptied /workspace.
    target = previous
    ws.run(BINARY_EDIT.format(size=size, path="/workspace/data/d01/f00001.bin"))
    ms, _ = timed(lambda: checkpoints.restore_checkpoint(ws.session, target,
                                                         admission=ws.admission))
    rows.append(Row("restore of a one-file change", samples=[ms],
                    note="includes the undo checkpoint taken first"))
    ws.run("find /workspace -mindepth 1 -delete")
    restores = []
    for _ in range(2):
        ms, _ = timed(lambda: checkpoints.restore_checkpoint(ws.session, target,
                                                             admission=ws.admission))
        restores.append(ms)
        after = ws.run("du -sm /workspace/data | cut -f1; find /workspace -type f | wc -l")
        ws.run("find /workspace -mindepth 1 -delete")
    rows.append(Row(f"restore of {megabytes} MB into an empty workspace", samples=restores,
                    target="<= 2 s",
                    note="then: " + " MB, ".join(after.split()) + " files"))
    ws.run("true")

    # Fork start: a new session's workspace from the checkpoint.
    starts, answered = [], []
    for k in range(2):
        fork = Workspace(new_session(fixture, f"fork {k}"))
        started = time.perf_counter()
        checkpoints.populate_from_checkpoint(fork.session, target, admission=fork.admission)
        starts.append((time.perf_counter() - started) * 1000)
        fork.run("test -f /workspace/data/d00/f00000.txt")
        answered.append((time.perf_counter() - started) * 1000)
    rows.append(Row("fork start: populate_from_checkpoint", samples=starts, target="<= 1 s",
                    note="new session: its sandbox is created on the way"))
    rows.append(Row("fork start: to its first command answered", samples=answered))
    warm = []
    for k in range(2):
        fork = Workspace(new_session(fixture, f"warm fork {k}"))
        fork.run("true")  # its sandbox already running, as a warm-pool claim leaves it
        ms, _ = timed(lambda fork=fork: checkpoints.populate_from_checkpoint(
            fork.session, target, admission=fork.admission))
        warm.append(ms)
    rows.append(Row("fork start: populate into a running sandbox", samples=warm,
                    target="<= 1 s"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="500 files / 20 MB, 5 cells")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--cells", type=int, default=30)
    parser.add_argument("--output", type=Path, help="also write the results (Markdown) here")
    args = parser.parse_args()
    files, megabytes, cells = (500, 20, 5) if args.smoke else (args.files, args.megabytes,
                                                              args.cells)
    when = dt.datetime.now(dt.UTC)
    details = machine()
    started = time.perf_counter()
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "var").mkdir(parents=True)
    create_database()
    os.environ.update(bench_env())
    import django

    django.setup()
    from agentide.sandboxes import services as sandboxes

    rows: list[Row] = []
    try:
        rows = measure(files, megabytes, cells)
    finally:
        with contextlib.suppress(Exception):
            sandboxes.purge_site_sandboxes()
        from django.db import connections

        connections.close_all()
        with contextlib.suppress(Exception):
            drop_database()
        shutil.rmtree(WORK, ignore_errors=True)
    elapsed = time.perf_counter() - started
    argv = " ".join(["bench/checkpoint_bench.py", *sys.argv[1:]])
    text = "\n".join([
        f"# Checkpoint bench, {when:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `.venv/bin/python {argv}` — took {elapsed / 60:.1f} min.",
        "",
        f"Workspace: {files} files, {megabytes} MB; {cells} cells each changing one file.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in details.items()) + ".",
        "",
        "The machine is shared with other developers' test runs while this ran: absolute "
        "numbers are noisy.",
        "",
        table(rows),
    ])
    print()
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
        print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
