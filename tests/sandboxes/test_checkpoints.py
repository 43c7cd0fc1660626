"""Workspace checkpoints on real sandboxes: dedup, diffs, restore and its undo, hostile
workspaces, storage limits, retention, bundles — under runc and gVisor.

(The commands here use find, not ls -l or stat: this host's gVisor answers statx with
EINVAL.)"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from sandbox_support import RUNTIMES

from agentide.quotas.services import sandbox_admission
from agentide.sandboxes import checkpoints, services
from agentide.sandboxes.checkpoints import CheckpointError
from agentide.sandboxes.models import Checkpoint

pytestmark = pytest.mark.django_db


@pytest.fixture(params=list(RUNTIMES.values()), ids=list(RUNTIMES))
def runtime(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(autouse=True)
def test_site(sandbox_image: str, runtime: str, tmp_path: Path) -> Iterator[str]:
    """A sandbox site and a checkpoint store of its own for each test, emptied after."""
    site = f"test-{uuid.uuid4().hex[:8]}"
    with override_settings(AGENTIDE_SANDBOX_SITE=site, AGENTIDE_SANDBOX_IMAGE=sandbox_image,
                           AGENTIDE_SANDBOX_WARM_POOL_SIZE=0, AGENTIDE_SANDBOX_RUNTIME=runtime,
                           AGENTIDE_CHECKPOINT_DIR=str(tmp_path / "store")):
        yield site
        services.purge_site_sandboxes()


def make_session(**project_fields: Any) -> Any:
    from agentide.accounts.models import Team
    from agentide.projects.models import Project
    from agentide.sessions.models import Session

    team = Team.objects.create(name=f"T {uuid.uuid4().hex[:6]}", slug=uuid.uuid4().hex[:10])
    fields = {"sandbox_memory_mb": 256, "sandbox_pids_limit": 128, "sandbox_tmp_mb": 16,
              "command_timeout_s": 60, **project_fields}
    project = Project.objects.create(team=team, name="P", slug="p", **fields)
    return Session.objects.create(project=project, title="S")


@pytest.fixture
def session() -> Any:
    return make_session()


def sh(session: Any, command: str) -> str:
    chunks: list[bytes] = []
    result = services.run_command(session, command, command_id=uuid.uuid4().hex,
                                  admission=sandbox_admission(session),
                                  on_output=lambda stream, data: chunks.append(data))
    out = b"".join(chunks).decode(errors="replace")
    assert (result.outcome, result.exit_code) == ("exit", 0), out
    return out


def take(session: Any, reason: str = "test") -> Checkpoint:
    result = checkpoints.take_checkpoint(session, admission=sandbox_admission(session),
                                         reason=reason)
    assert result.checkpoint is not None, result.error
    return result.checkpoint


def stored(tmp_path: Path, kind: str = "blobs") -> set[str]:
    """Names of the store's file blobs (or "trees")."""
    root = tmp_path / "store" / kind
    return {p.parent.name + p.name for p in root.glob("*/*")} if root.is_dir() else set()


def entries(checkpoint: Checkpoint) -> dict[str, checkpoints.Entry]:
    return {e.path: e for e in checkpoints.manifest_entries(checkpoint)}


def test_unchanged_files_cost_nothing(session: Any, tmp_path: Path) -> None:
    sh(session, "mkdir -p src && printf 'one\\n' > src/a.txt && head -c 100000 /dev/urandom "
                "> data.bin && ln -s src/a.txt link")
    first = take(session)
    files, trees = stored(tmp_path), stored(tmp_path, "trees")
    listed = entries(first)
    assert set(listed) == {"src", "src/a.txt", "data.bin", "link"}
    assert listed["src/a.txt"].sha256 == hashlib.sha256(b"one\n").hexdigest()
    assert listed["link"].kind == "symlink" and listed["link"].target == "src/a.txt"
    assert first.added_bytes >= 100_004

    second = take(session)
    assert second.manifest == first.manifest
    assert (stored(tmp_path), stored(tmp_path, "trees")) == (files, trees)  # nothing added
    assert second.added_bytes == 0

    sh(session, "printf 'two\\n' > src/b.txt")
    third = take(session)
    assert stored(tmp_path) - files == {hashlib.sha256(b"two\n").hexdigest()}
    assert len(stored(tmp_path, "trees") - trees) == 2  # src's tree and the root's
    assert third.added_bytes < 2000


def test_the_diff_shows_edits_additions_deletions_binaries_and_symlinks(session: Any) -> None:
    sh(session, "printf 'a\\nb\\nc\\n' > keep.txt; printf 'gone\\n' > gone.txt; "
                "printf '\\x00\\x01' > bin.dat; ln -s keep.txt ln; mkdir d")
    old = take(session)
    sh(session, "printf 'a\\nB\\nc\\n' > keep.txt; rm gone.txt; printf '\\x00\\x02\\x03' > bin.dat;"
                " ln -sfn other ln; printf 'new\\n' > d/new.txt; chmod 600 keep.txt")
    new = take(session)
    diff = checkpoints.diff_checkpoints(old, new)
    assert [c.path for c in diff.added] == ["d/new.txt"]
    assert [c.path for c in diff.removed] == ["gone.txt"]
    changed = {c.path: c for c in diff.changed}
    assert set(changed) == {"bin.dat", "keep.txt", "ln"}
    assert "-b\n+B\n" in changed["keep.txt"].diff
    assert (changed["keep.txt"].old_mode, changed["keep.txt"].new_mode) == (0o644, 0o600)
    assert changed["bin.dat"].binary and changed["bin.dat"].diff == ""
    assert (changed["bin.dat"].old_size, changed["bin.dat"].new_size) == (2, 3)
    assert (changed["ln"].old_target, changed["ln"].new_target) == ("keep.txt", "other")
    assert "+new\n" in diff.added[0].diff
    assert checkpoints.diff_checkpoints(new, new).empty


def test_a_long_text_diff_is_capped_with_a_note(session: Any) -> None:
    old = take(session)
    sh(session, "seq 1 20000 > long.txt")
    diff = checkpoints.diff_checkpoints(old, take(session), max_text_bytes=1000)
    change = diff.added[0]
    assert len(change.diff) == 1000 and "cut" in change.note and diff.capped


def test_restore_brings_back_every_byte_and_can_be_undone(session: Any) -> None:
    sh(session, "mkdir -p a/b && head -c 300000 /dev/urandom > a/b/blob && printf 'x' > a/x "
                "&& chmod 751 a/x && ln -s /etc/passwd a/abs && mkdir empty && chmod 700 empty"
                " && mkdir -p node_modules/pkg && echo dep > node_modules/pkg/i.js")
    before = sh(session, "cd /workspace && find . -path ./.agentide -prune -o -printf "
                         "'%p %y %m %l\\n' | sort && sha256sum a/b/blob a/x")
    saved = take(session)
    sh(session, "rm -rf a/b; echo changed > a/x; rm a/abs; mkdir a/abs; echo new > added.txt;"
                " rmdir empty; echo later > node_modules/pkg/later.js")
    edited = sh(session, "cd /workspace && find . -path ./.agentide -prune -o -printf "
                         "'%p %y %m %l\\n' | sort")

    undo = checkpoints.restore_checkpoint(session, saved, admission=sandbox_admission(session))
    after = sh(session, "cd /workspace && find . -path ./.agentide -prune -o -printf "
                        "'%p %y %m %l\\n' | sort && sha256sum a/b/blob a/x")
    # Ignored paths are left alone: node_modules keeps what was written since.
    assert after.replace("./node_modules/pkg/later.js f 644 \n", "") == before
    assert "later.js" in after

    checkpoints.restore_checkpoint(session, undo, admission=sandbox_admission(session))
    assert sh(session, "cd /workspace && find . -path ./.agentide -prune -o -printf "
                       "'%p %y %m %l\\n' | sort") == edited
    assert sh(session, "find added.txt -printf '%U:%G'") == "1000:1000"


def test_a_hostile_workspace_is_kept_safely(session: Any) -> None:
    sh(session, "ln -s /etc etc-link; ln -s / root-link; ln -s ../.. up; "
                "printf 'x' > \"$(printf 'new\\nline')\"; mkfifo pipe; "
                "mkdir many && (cd many && seq 1 3000 | xargs touch); "
                "printf 'secret' > /tmp/outside; printf 'h' > h1; ln h1 h2")
    saved = take(session)
    listed = entries(saved)
    assert listed["h1"].sha256 == listed["h2"].sha256  # hard links: each a file
    sh(session, "printf 'H' > h1")  # both change (one inode); one round trip brings both
    again = entries(take(session))
    assert again["h1"].sha256 == again["h2"].sha256 == hashlib.sha256(b"H").hexdigest()
    assert listed["etc-link"].kind == "symlink" and listed["etc-link"].target == "/etc"
    assert "new\nline" in listed
    assert "pipe" not in listed  # a FIFO has no content to keep
    assert len([p for p in listed if p.startswith("many/")]) == 3000
    assert not any(p.startswith(("etc-link/", "root-link/", "up/")) for p in listed)

    # A restore writes through none of those links.
    sh(session, "rm -rf many etc-link && mkdir etc-link")
    checkpoints.restore_checkpoint(session, saved, admission=sandbox_admission(session))
    assert sh(session, "readlink etc-link; find many -type f | wc -l; "
                       "cat \"$(printf 'new\\nline')\"") == "/etc\n3000\nx"


def test_a_workspace_over_the_bounds_is_refused_with_a_reason(
    session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "MAX_ENTRIES", 50)
    sh(session, "mkdir many && (cd many && seq 1 100 | xargs touch)")
    result = checkpoints.take_checkpoint(session, admission=sandbox_admission(session),
                                         reason="test")
    assert result.checkpoint is None and "more than 50" in result.error
    assert sh(session, "find many -type f | wc -l") == "100\n"  # nothing lost


def test_storage_over_the_limit_is_refused_and_loses_nothing(session: Any) -> None:
    session.project.sandbox_disk_mb = 16
    session.project.save()
    for _ in range(2):  # 24 MB of the 32 MB this session's checkpoints may hold
        sh(session, "head -c 12000000 /dev/urandom > big")
        take(session)
    sh(session, "head -c 12000000 /dev/urandom > big")
    result = checkpoints.take_checkpoint(session, admission=sandbox_admission(session),
                                         reason="test")
    assert result.checkpoint is None and "storage of this session is full" in result.error
    assert sh(session, "find big -printf %s") == "12000000"


def test_a_full_workspace_still_checkpoints(session: Any) -> None:
    session.project.sandbox_disk_mb = 16
    session.project.save()
    sh(session, "head -c 14000000 /dev/urandom > fill; "
                "head -c 50000000 /dev/zero > more 2>/dev/null; df -k . | tail -1 >&2; true")
    saved = take(session)  # the store is host-side: a full /workspace is no obstacle
    assert entries(saved)["fill"].size == 14_000_000


def test_retention_keeps_the_last_the_young_and_the_pinned(session: Any, tmp_path: Path) -> None:
    import datetime as dt

    from django.utils import timezone

    session.project.checkpoint_keep_last = 2
    session.project.checkpoint_keep_days = 1
    session.project.save()
    made = []
    for i in range(5):
        sh(session, f"echo {i} > f{i}")
        made.append(take(session))
    old = timezone.now() - dt.timedelta(days=3)
    Checkpoint.objects.filter(pk__in=[c.pk for c in made[:4]]).update(created_at=old)
    checkpoints.pin_checkpoint(made[0])
    f1_sha = entries(made[1])["f1"].sha256
    assert checkpoints.prune_checkpoints(session.project) == 2
    assert set(Checkpoint.objects.values_list("pk", flat=True)) == {
        made[0].pk, made[3].pk, made[4].pk}
    # Blobs are swept after their grace period only.
    assert checkpoints.sweep_blobs(grace_s=0) >= 0
    assert checkpoints.has_blob(f1_sha)  # still named by the later checkpoints
    for c in (made[0], made[3], made[4]):
        assert all(checkpoints.has_blob(e.sha256) for e in entries(c).values()
                   if e.kind == "file")


def test_unreferenced_blobs_are_swept(session: Any) -> None:
    sh(session, "echo only-here > solo")
    first = take(session)
    solo = entries(first)["solo"].sha256
    sh(session, "rm solo")
    take(session)
    first.delete()
    assert checkpoints.sweep_blobs(grace_s=0) == 2  # the file and the first root tree
    assert not checkpoints.has_blob(solo)


def test_a_bundle_round_trips_and_a_forged_one_is_refused(session: Any) -> None:
    sh(session, "mkdir d && echo hello > d/h && ln -s d/h l")
    saved = take(session)
    data = b"".join(checkpoints.export_bundle([saved]))
    other = make_session()
    imported = checkpoints.import_bundle(other, io.BytesIO(data))
    copy = imported[saved.pk]
    assert copy.session_id == other.pk and copy.manifest == saved.manifest

    checkpoints.populate_from_checkpoint(other, copy, admission=sandbox_admission(other))
    assert sh(other, "cat d/h; readlink l") == "hello\nd/h\n"

    sha = entries(saved)["d/h"].sha256
    forged = data.replace(b"hello\n", b"HELLO\n")
    assert forged != data
    with pytest.raises(CheckpointError, match="does not match"):
        checkpoints.import_bundle(make_session(), io.BytesIO(forged))
    assert sha  # the real blob stays


def test_checkpoints_off_takes_none(session: Any) -> None:
    session.project.checkpoints_enabled = False
    session.project.save()
    result = checkpoints.take_checkpoint(session, admission=sandbox_admission(session),
                                         reason="test")
    assert result.checkpoint is None and "off" in result.error


def test_changed_files_come_back_in_the_scans_own_round_trip(
    session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sh(session, "mkdir d && echo old > d/f && echo same > g")
    take(session)  # the first reads every file
    sh(session, "echo new > d/f && echo added > d/h")
    backend = services.get_backend()

    def second_trip(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a second round trip")

    monkeypatch.setattr(backend, "read_workspace_files", second_trip)
    listed = entries(take(session))
    assert listed["d/f"].sha256 == hashlib.sha256(b"new\n").hexdigest()
    assert listed["d/h"].sha256 == hashlib.sha256(b"added\n").hexdigest()


def test_the_hourly_job_applies_each_projects_retention(session: Any) -> None:
    import datetime as dt

    from django.utils import timezone

    from agentide.sandboxes import tasks

    session.project.checkpoint_keep_last = 1
    session.project.checkpoint_keep_days = 0
    session.project.save()
    old = [take(session) for _ in range(3)]
    Checkpoint.objects.update(created_at=timezone.now() - dt.timedelta(hours=1))
    assert tasks.prune_checkpoints() == 2
    assert list(Checkpoint.objects.values_list("pk", flat=True)) == [old[-1].pk]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".", ""])
def test_a_bundle_whose_trees_name_paths_outside_is_refused(name: str) -> None:
    import json
    import tarfile
    import zlib

    content = b"owned\n"
    sha = hashlib.sha256(content).hexdigest()
    tree = json.dumps({"v": 1, "entries": [[name, "file", 0o644, len(content), sha, "", ""]]},
                      separators=(",", ":")).encode()
    root = hashlib.sha256(tree).hexdigest()
    index = json.dumps({"version": 1, "checkpoints": [{"id": 1, "manifest": root}]}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member, data in (("index.json", index), (f"trees/{root}", zlib.compress(tree)),
                             (f"blobs/{sha}", content)):
            info = tarfile.TarInfo(f"agentide-checkpoints/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(CheckpointError):
        checkpoints.import_bundle(make_session(), io.BytesIO(buf.getvalue()))
    assert not Checkpoint.objects.exists()
