"""Checkpoints in the transcript: each cell's changed files on the page and in the Markdown
and HTML exports, and the checkpoint bundle exported beside the JSONL and imported with it
(on real checkpoints of a real sandbox)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from agentide.sandboxes.models import Checkpoint
from agentide.sessions import changes, execution
from agentide.sessions.models import Cell, Session

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def destroy_sandboxes() -> Iterator[None]:
    yield
    from agentide.sandboxes import services as sandboxes

    for session in Session.objects.all():
        sandboxes.destroy_sandbox(session)


def run(personas: Any, session: Any, source: str) -> Cell:
    cell = execution.submit_cell(personas.membership(personas.member), session, "shell", source)
    execution.run_queued_cells(session.pk, worker="test")
    cell.refresh_from_db()
    assert cell.status == Cell.Status.FINISHED, (cell.status, cell.error, cell.output)
    return cell


def client(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


@pytest.fixture
def worked(personas: Any, project: Any, no_tasks: list[int]) -> Session:
    """A session whose second cell added a file with a hostile name, changed one, removed
    one."""
    from agentide.sessions.services import create_session

    session = create_session(personas.membership(personas.member), project, "Work")
    run(personas, session, "printf 'one\\n' > a.txt && printf 'x\\n' > b.txt")
    run(personas, session,
        "printf 'two\\n' > a.txt && rm b.txt && echo hi > 'c`<b>x.txt'")
    run(personas, session, "echo unchanged")
    return session


def bundle_bytes(session: Session) -> bytes:
    response = client_for_session(session).get(f"/s/{session.pk}/transcript.checkpoints.tar")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-tar"
    return b"".join(response.streaming_content)


def client_for_session(session: Session) -> Client:
    return client(session.created_by)


def test_the_page_and_the_exports_list_each_cells_changed_files(personas, worked):
    reviewer = client(personas.reviewer)
    page = reviewer.get(f"/s/{worked.pk}/transcript/").content.decode()
    second = Cell.objects.get(session=worked, position=2)
    assert page.count("Files changed:") == 2  # the first and second cells; not the third
    assert f"/s/{worked.pk}/cells/{second.pk}/diff/" in page

    markdown = reviewer.get(f"/s/{worked.pk}/transcript.md").content.decode()
    assert "Files changed: +1 \u22121 ~1" in markdown
    assert "- + ``c`<b>x.txt``" in markdown
    assert "- \u2212 `b.txt`" in markdown and "- ~ `a.txt`" in markdown

    html = reviewer.get(f"/s/{worked.pk}/transcript.html").content.decode()
    assert "c`&lt;b&gt;x.txt" in html and "<b>x" not in html
    assert html.count('class="cell-files tr-files"') == 2
    assert "hx-get" not in html


def test_restore_cells_read_as_restores(personas, worked):
    second = Cell.objects.get(session=worked, position=2)
    before = changes.logged_checkpoints(worked.pk, second.pk)["before"]["checkpoint"]
    execution.submit_cell(personas.membership(personas.member), worked, "restore", str(before))
    execution.run_queued_cells(worked.pk, worker="test")
    reviewer = client(personas.reviewer)
    page = reviewer.get(f"/s/{worked.pk}/transcript/").content.decode()
    assert "restored the files" in page and f"Files restored to checkpoint <strong>{before}" in page
    markdown = reviewer.get(f"/s/{worked.pk}/transcript.md").content.decode()
    assert "## #4 restore by member" in markdown
    assert f"Files restored to checkpoint {before}\n\nFiles changed: +1 \u22121 ~1" in markdown


def test_a_bundle_brings_the_checkpoints_with_an_import(personas, worked):
    from agentide.transcripts import exchange

    jsonl = "".join(exchange.export_jsonl(worked)).encode()
    tar = bundle_bytes(worked)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        assert archive.getnames()[0] == "agentide-checkpoints/index.json"  # docs/checkpoints.md
    assert client(personas.reviewer).get(
        f"/s/{worked.pk}/transcript.checkpoints.tar").status_code == 200
    assert client(personas.outsider).get(
        f"/s/{worked.pk}/transcript.checkpoints.tar").status_code == 404

    # Another team imports it: its own checkpoints, with the same files.
    outsider = client(personas.outsider)
    project = personas.other_team.projects.create(name="Mine", slug="mine")
    response = outsider.post(
        "/t/other/transcripts/import/checkpoints/",
        {
            "project": project.pk,
            "file": SimpleUploadedFile("t.jsonl", jsonl),
            "checkpoints": SimpleUploadedFile("t.checkpoints.tar", tar),
        },
    )
    assert response.status_code == 302, response.content.decode()[-2000:]
    imported = Session.objects.get(project=project)
    assert Checkpoint.objects.filter(session=imported).count() == (
        Checkpoint.objects.filter(session=worked).count()
    )
    cell = Cell.objects.get(session=imported, position=2)
    diff = changes.cell_diff(imported.pk, cell.pk, cell.kind)
    assert [e.path for e in diff.added] == ["c`<b>x.txt"]
    assert [e.path for e in diff.removed] == ["b.txt"]
    assert [e.path for e in diff.changed] == ["a.txt"]
    page = outsider.get(f"/s/{imported.pk}/transcript/").content.decode()
    assert page.count("Files changed:") == 2


def test_an_imported_session_forks_from_the_files_before_its_prompt(personas, worked):
    import uuid

    from agentide.quotas.services import sandbox_admission
    from agentide.sandboxes import services as sandboxes
    from agentide.transcripts import exchange, forks
    from agentide.transcripts.models import Fork

    # A prompt (no model is set up: it fails, but the files before it are kept), then a
    # cell that changes them again.
    member = personas.membership(personas.member)
    execution.submit_cell(member, worked, "prompt", "Tidy up.")
    execution.run_queued_cells(worked.pk, worker="test")
    run(personas, worked, "rm a.txt && echo late > late.txt")
    jsonl = "".join(exchange.export_jsonl(worked)).encode()
    tar = bundle_bytes(worked)

    outsider = client(personas.outsider)
    project = personas.other_team.projects.create(name="Mine", slug="mine")
    response = outsider.post("/t/other/transcripts/import/checkpoints/", {
        "project": project.pk, "file": SimpleUploadedFile("t.jsonl", jsonl),
        "checkpoints": SimpleUploadedFile("t.checkpoints.tar", tar),
    })
    assert response.status_code == 302
    imported = Session.objects.get(project=project)
    assert "Fork from here" in outsider.get(f"/s/{imported.pk}/transcript/").content.decode()
    response = outsider.post(f"/s/{imported.pk}/transcript/fork/4/", {"project": project.pk})
    assert response.status_code == 302, response.content.decode()[-1500:]
    fork = Fork.objects.get(source=imported)
    assert forks.replay_fork(fork.session_id) == "replayed"
    fork.refresh_from_db()
    assert fork.workspace_copied and not fork.workspace_error
    out: list[bytes] = []
    sandboxes.run_command(
        fork.session, "cat a.txt; ls", command_id=uuid.uuid4().hex,
        admission=sandbox_admission(fork.session), on_output=lambda s, d: out.append(d),
    )
    assert b"".join(out).decode() == "two\na.txt\nc`<b>x.txt\n"


def test_an_imported_session_without_its_bundle_cannot_be_forked(personas, worked):
    from agentide.transcripts import exchange

    execution.submit_cell(personas.membership(personas.member), worked, "prompt", "Tidy up.")
    execution.run_queued_cells(worked.pk, worker="test")
    jsonl = "".join(exchange.export_jsonl(worked)).encode()
    outsider = client(personas.outsider)
    project = personas.other_team.projects.create(name="Mine", slug="mine")
    outsider.post("/t/other/transcripts/import/", {
        "project": project.pk, "file": SimpleUploadedFile("t.jsonl", jsonl)})
    imported = Session.objects.get(project=project)
    assert "Fork from here" not in outsider.get(f"/s/{imported.pk}/transcript/").content.decode()
    response = outsider.post(f"/s/{imported.pk}/transcript/fork/4/", {"project": project.pk})
    assert response.status_code == 404


def test_an_import_without_its_bundle_shows_nobodys_files(personas, worked):
    """The log names checkpoint ids of the exporting site: here they match another
    session's checkpoints (the exporter's), which must never show."""
    from agentide.transcripts import exchange

    jsonl = "".join(exchange.export_jsonl(worked)).encode()
    outsider = client(personas.outsider)
    project = personas.other_team.projects.create(name="Mine", slug="mine")
    response = outsider.post(
        "/t/other/transcripts/import/",
        {"project": project.pk, "file": SimpleUploadedFile("t.jsonl", jsonl)},
    )
    assert response.status_code == 302
    imported = Session.objects.get(project=project)
    cell = Cell.objects.get(session=imported, position=2)
    assert outsider.get(f"/s/{imported.pk}/cells/{cell.pk}/diff/").status_code == 200
    assert changes.cell_diff(imported.pk, cell.pk).missing
    page = outsider.get(f"/s/{imported.pk}/transcript/").content.decode()
    assert "Files changed:" not in page
    markdown = outsider.get(f"/s/{imported.pk}/transcript.md").content.decode()
    assert "Files changed" not in markdown


def test_the_plain_import_keeps_the_transcript_limit(personas, worked, settings):
    """A bundle goes to its own import page: the transcript-only page still refuses a body
    over the transcript limit as it is read."""
    from agentide.transcripts import exchange

    jsonl = "".join(exchange.export_jsonl(worked)).encode()
    settings.TRANSCRIPT_IMPORT_MAX_BYTES = len(jsonl) + 4096
    outsider = client(personas.outsider)
    project = personas.other_team.projects.create(name="Mine", slug="mine")
    response = outsider.post("/t/other/transcripts/import/", {
        "project": project.pk, "file": SimpleUploadedFile("t.jsonl", jsonl),
        "checkpoints": SimpleUploadedFile("t.checkpoints.tar", bundle_bytes(worked)),
    })
    assert response.status_code == 413
    page = outsider.get("/t/other/transcripts/import/").content.decode()
    assert 'name="checkpoints"' not in page and "/t/other/transcripts/import/checkpoints/" in page
    page = outsider.get("/t/other/transcripts/import/checkpoints/").content.decode()
    assert 'name="checkpoints"' in page
    assert not Session.objects.filter(project=project).exists()


def test_a_broken_bundle_imports_nothing(personas, worked):
    from agentide.transcripts import exchange

    jsonl = "".join(exchange.export_jsonl(worked)).encode()
    # The same bundle with one byte of its last blob flipped: it no longer matches its name.
    members = []
    with tarfile.open(fileobj=io.BytesIO(bundle_bytes(worked))) as archive:
        for member in archive:
            content = archive.extractfile(member)
            members.append((member, content.read() if content else b""))
    member, data = members[-1]
    members[-1] = (member, bytes([data[0] ^ 0xFF]) + data[1:])
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        for member, data in members:
            archive.addfile(member, io.BytesIO(data))
    outsider = client(personas.outsider)
    project = personas.other_team.projects.create(name="Mine", slug="mine")
    response = outsider.post(
        "/t/other/transcripts/import/checkpoints/",
        {
            "project": project.pk,
            "file": SimpleUploadedFile("t.jsonl", jsonl),
            "checkpoints": SimpleUploadedFile("t.checkpoints.tar", tar.getvalue()),
        },
    )
    assert response.status_code == 422
    assert "checkpoints:" in response.content.decode()
    assert not Session.objects.filter(project=project).exists()
    assert not Checkpoint.objects.exclude(session=worked).exists()


def _bundle_claiming(worked: Session, blob_bytes: int) -> bytes:
    """The session's bundle index followed by a blob member whose header claims
    ``blob_bytes`` (its content is never sent: the claim alone must be refused)."""
    with tarfile.open(fileobj=io.BytesIO(bundle_bytes(worked))) as archive:
        index = archive.getmember("agentide-checkpoints/index.json")
        content = archive.extractfile(index)
        assert content is not None
        index_data = content.read()
    padding = b"\0" * (-len(index_data) % tarfile.BLOCKSIZE)
    blob = tarfile.TarInfo("agentide-checkpoints/blobs/" + "ab" * 32)
    blob.size = blob_bytes
    return index.tobuf() + index_data + padding + blob.tobuf() + b"x" * tarfile.BLOCKSIZE


def test_a_bundle_is_held_to_the_site_limit_and_the_projects_checkpoint_storage(
    personas, worked, settings
):
    from agentide.transcripts import exchange

    jsonl = "".join(exchange.export_jsonl(worked)).encode()
    outsider = client(personas.outsider)
    project = personas.other_team.projects.create(name="Mine", slug="mine", sandbox_disk_mb=16)

    def post(tar: bytes) -> str:
        response = outsider.post(
            "/t/other/transcripts/import/checkpoints/",
            {
                "project": project.pk,
                "file": SimpleUploadedFile("t.jsonl", jsonl),
                "checkpoints": SimpleUploadedFile("t.checkpoints.tar", tar),
            },
        )
        assert response.status_code == 422
        return response.content.decode()

    # The project's checkpoints may store twice its 16 MiB workspace.
    assert "larger than the 32 MiB this import may store" in post(
        _bundle_claiming(worked, 33 * 2**20)
    )
    settings.AGENTIDE_CHECKPOINT_MAX_BUNDLE_MB = 1
    assert "larger than the 1 MiB this import may store" in post(
        _bundle_claiming(worked, 2 * 2**20)
    )
    assert not Session.objects.filter(project=project).exists()
    assert not Checkpoint.objects.exclude(session=worked).exists()
