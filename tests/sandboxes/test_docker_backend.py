"""The Docker sandbox backend against a real engine: commands, state, lifecycle, files."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace

import pytest
from sandbox_support import REPO, TEST_LIMITS, Screen, run, wait_for

from agentide.lib.output import CappedOutput, StreamDecoder
from agentide.sandboxes.backends.base import (
    SandboxError,
    SandboxHandle,
    SandboxNotFound,
    SandboxNotRunning,
)
from agentide.sandboxes.backends.docker import DockerBackend


def test_it_runs_commands_as_the_agent_user_in_the_workspace(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    r = run(backend, sandbox, "id -u; pwd; echo err >&2; exit 7")
    assert r.result.outcome == "exit"
    assert r.result.exit_code == 7
    assert r.out.split() == ["1000", "/workspace"]
    assert r.stderr == b"err\n"


def test_files_cwd_and_env_persist_across_commands(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    run(backend, sandbox, "mkdir -p /workspace/proj && cd proj && echo hi > note.txt "
                          "&& export GREETING='hello world' && export TEMP_VAR=1")
    r = run(backend, sandbox, "pwd; cat note.txt; echo \"$GREETING\"")
    assert r.out.splitlines() == ["/workspace/proj", "hi", "hello world"]

    run(backend, sandbox, "unset TEMP_VAR; cd /workspace")
    r = run(backend, sandbox, "pwd; echo \"[${TEMP_VAR-unset}]\"")
    assert r.out.splitlines() == ["/workspace", "[unset]"]


def test_a_fresh_backend_picks_up_the_shell_state(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    """Another worker process (its own runner connection) sees the same cwd and env."""
    run(backend, sandbox, "mkdir -p /workspace/elsewhere && cd /workspace/elsewhere "
                          "&& export SHARED=yes")
    r = run(DockerBackend(), sandbox, "pwd; echo $SHARED")
    assert r.out.splitlines() == ["/workspace/elsewhere", "yes"]
    run(backend, sandbox, "cd /workspace")


def test_output_chunks_arrive_before_the_command_ends(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    # The command only finishes once the test has *seen* its first line and answered by
    # creating a file; if output were delivered at the end, it would time out instead.
    flag = f"go-{uuid.uuid4().hex[:8]}"
    seen: list[bytes] = []

    def on_output(stream: str, data: bytes) -> None:
        seen.append(data)
        if b"first" in data:
            DockerBackend().write_file(sandbox, flag, b"", max_bytes=10)

    result = backend.exec(
        sandbox,
        f"echo first; while [ ! -e /workspace/{flag} ]; do sleep 0.02; done; echo second; "
        f"rm /workspace/{flag}",
        command_id=uuid.uuid4().hex,
        timeout_s=20,
        on_output=on_output,
    )
    assert result.outcome == "exit", result
    assert b"".join(seen) == b"first\nsecond\n"


def _no_leftover(backend: DockerBackend, handle: SandboxHandle, pattern: str) -> bool:
    r = run(backend, handle, f"pgrep -f '{pattern}' || true")
    return r.out.strip() == ""


def test_timeout_kills_the_whole_group_including_escaped_children(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    r = run(
        backend, sandbox,
        "sleep 4001 & (sleep 4002 &); (setsid sleep 4003 &); "
        "(nohup setsid bash -c 'sleep 4004' >/dev/null 2>&1 &); echo started; sleep 4005",
        timeout_s=1,
    )
    assert r.result.outcome == "timeout"
    assert r.out == "started\n"
    wait_for(lambda: _no_leftover(backend, sandbox, "sleep 400[0-9]"), what="children killed")


def test_cancel_from_another_process_kills_the_whole_group(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    command_id = f"cancel-{uuid.uuid4().hex[:8]}"
    started = threading.Event()
    results = []

    def target() -> None:
        def on_output(stream: str, data: bytes) -> None:
            if b"started" in data:
                started.set()

        results.append(backend.exec(
            sandbox,
            "sleep 5001 & (setsid sleep 5002 &); echo started; sleep 5003",
            command_id=command_id, timeout_s=60, on_output=on_output,
        ))

    thread = threading.Thread(target=target)
    thread.start()
    assert started.wait(20)
    # A separate Python process, like a different Celery worker, with its own engine client.
    code = (
        "from agentide.sandboxes.backends.docker import DockerBackend;"
        "from agentide.sandboxes.backends.base import SandboxHandle;"
        f"print(DockerBackend().cancel(SandboxHandle({sandbox.container_id!r}, "
        f"{sandbox.volume!r}), {command_id!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == "True"
    thread.join(20)
    assert results
    if results[0].source == "runner":
        assert results[0].outcome == "cancelled"
    else:
        # One exec per command (gVisor): the cancel came from another process, so this one
        # sees its command killed; the cell's own cancel request says why.
        assert (results[0].outcome, results[0].exit_code) == ("exit", 137)
    wait_for(lambda: _no_leftover(backend, sandbox, "sleep 500[0-9]"), what="children killed")


def test_cancel_through_the_same_backend(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    command_id = f"cancel-{uuid.uuid4().hex[:8]}"
    started = threading.Event()
    results = []

    def target() -> None:
        results.append(backend.exec(
            sandbox, "echo started; sleep 6001", command_id=command_id, timeout_s=60,
            on_output=lambda s, d: started.set(),
        ))

    run(backend, sandbox, "true")  # leaves an idle connection for the cancel to use
    thread = threading.Thread(target=target)
    thread.start()
    assert started.wait(20)
    assert backend.cancel(sandbox, command_id) is True
    thread.join(20)
    assert results[0].outcome == "cancelled"


def test_background_processes_outlive_their_command(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    r = run(backend, sandbox, "nohup sleep 7001 >/dev/null 2>&1 & echo $!")
    assert r.result.outcome == "exit"
    assert not _no_leftover(backend, sandbox, "sleep 7001")
    run(backend, sandbox, "pkill -f 'sleep 7001'")


def test_it_is_hardened(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    r = run(backend, sandbox, "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status")
    status = dict(line.split(":\t") for line in r.out.splitlines())
    assert status["CapEff"].strip() == "0000000000000000"
    assert status["CapPrm"].strip() == "0000000000000000"
    assert status["CapBnd"].strip() == "0000000000000000"
    # prctl(PR_GET_NO_NEW_PRIVS): gVisor's /proc/self/status has no NoNewPrivs line.
    r = run(backend, sandbox,
            "python3 -c 'import ctypes; print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))'")
    assert r.out == "1\n", r

    assert run(backend, sandbox, "id -u").out.strip() == "1000"
    assert run(backend, sandbox, "touch /usr/x").result.exit_code != 0
    assert run(backend, sandbox, "touch /x").result.exit_code != 0
    assert run(backend, sandbox, "echo > /etc/passwd").result.exit_code != 0
    assert run(backend, sandbox, "sudo true || su -c true").result.exit_code != 0
    r = run(backend, sandbox, "ls -l /var/run/docker.sock /run/docker.sock /docker.sock; "
                              "find / -name 'docker.sock' -not -path '/proc/*' 2>/dev/null")
    assert "docker.sock" not in r.out
    # /tmp is a small tmpfs; the workspace is the only other writable place.
    r = run(backend, sandbox, "df -k /tmp | tail -1")
    assert int(r.out.split()[1]) <= 16 * 1024


def test_no_network_dns_or_tcp(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    r = run(backend, sandbox, "ls /sys/class/net")
    assert set(r.out.split()) <= {"lo"}  # gVisor with --network=none shows no interface
    # Network is unreachable without an interface: these fail at once, sending nothing.
    tcp = run(backend, sandbox,
              "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), 3)\"")
    assert tcp.result.exit_code != 0
    assert b"unreachable" in tcp.stderr.lower() or b"no route to host" in tcp.stderr.lower()
    dns = run(backend, sandbox, "getent hosts deb.debian.org", timeout_s=30)
    assert dns.result.exit_code != 0


def test_no_host_environment_reaches_the_sandbox(
    backend: DockerBackend, make_sandbox: Callable[..., SandboxHandle],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTIDE_CANARY_SECRET", "s3cr3t-canary")
    handle = make_sandbox()
    r = run(backend, handle, "env; cat /proc/1/environ | tr '\\0' '\\n'")
    assert "s3cr3t-canary" not in r.out
    names = {line.split("=", 1)[0] for line in r.out.splitlines() if "=" in line}
    assert names <= {"PATH", "HOSTNAME", "HOME", "LANG", "DEBIAN_FRONTEND", "PWD", "SHLVL",
                     "_", "AGENTIDE_COMMAND_ID", "OLDPWD"}


def test_sessions_cannot_see_each_others_files_or_processes(
    backend: DockerBackend, sandbox: SandboxHandle, other_sandbox: SandboxHandle
) -> None:
    run(backend, other_sandbox,
        "echo b-only > /workspace/b-secret; nohup sleep 8123 >/dev/null 2>&1 &")
    r = run(backend, sandbox, "ls -a /workspace; ps -eo args")
    assert "b-secret" not in r.out
    assert "8123" not in r.out
    assert "b-only" in run(backend, other_sandbox, "cat /workspace/b-secret").out
    run(backend, other_sandbox, "pkill -f 'sleep 8123'; rm /workspace/b-secret")


def test_stop_keeps_the_workspace_and_start_resumes_the_shell_state(
    backend: DockerBackend, make_sandbox: Callable[..., SandboxHandle]
) -> None:
    handle = make_sandbox()
    run(backend, handle, "mkdir -p /workspace/keep && cd /workspace/keep && echo 1 > f "
                         "&& export KEPT=1")
    backend.stop(handle)
    assert backend.is_running(handle) is False
    backend.start(handle)
    assert backend.is_running(handle) is True
    r = run(backend, handle, "pwd; cat f; echo $KEPT")
    assert r.out.splitlines() == ["/workspace/keep", "1", "1"]


def test_destroy_removes_container_and_volume(
    backend: DockerBackend, sandbox_image: str, make_sandbox: Callable[..., SandboxHandle]
) -> None:
    handle = make_sandbox()
    assert handle.volume in backend.list_volumes()
    backend.destroy(handle)
    assert handle.volume not in backend.list_volumes()
    with pytest.raises(SandboxNotFound):
        backend.is_running(handle)
    backend.destroy(handle)  # idempotent


def test_stats_report_cpu_memory_and_pids(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    run(backend, sandbox, "true")
    for stats in (backend.stats(sandbox), backend._engine_stats(sandbox)):
        assert stats.memory_limit_bytes == 256 * 1024 * 1024
        assert 0 < stats.memory_bytes < stats.memory_limit_bytes
        assert stats.pids >= 2  # init, sleep, the runner
        assert stats.cpu_percent >= 0


def test_stats_see_a_busy_command(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    started = threading.Event()
    thread = threading.Thread(target=lambda: backend.exec(
        sandbox, "echo go; timeout 3 sh -c 'while :; do :; done'", command_id="busy-cpu",
        timeout_s=20, on_output=lambda s, d: started.set()))
    thread.start()
    assert started.wait(20)
    stats = DockerBackend().stats(sandbox)
    thread.join(20)
    assert stats.cpu_percent > 10


def test_list_sandboxes_finds_labelled_containers_only(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    unlabelled = backend.client.containers.create(
        "agentide-sandbox:latest", network_mode="none", name=f"unlabelled-{uuid.uuid4().hex[:8]}"
    )
    try:
        listed = {s.container_id: s for s in backend.list_sandboxes()}
        assert sandbox.container_id in listed
        assert listed[sandbox.container_id].volume == sandbox.volume
        assert listed[sandbox.container_id].labels["app"] == "agentide"
        assert unlabelled.id not in listed
    finally:
        unlabelled.remove(force=True)


# -- output edge cases -------------------------------------------------------------------


def test_a_10_mb_line_without_newline_streams_whole(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    decoder = StreamDecoder()
    capture = CappedOutput(head_chars=1000, tail_chars=1000)
    total = 0

    def on_output(stream: str, data: bytes) -> None:
        nonlocal total
        total += len(data)
        capture.append(decoder.feed(data))

    result = backend.exec(sandbox, "head -c 10000000 /dev/zero | tr '\\0' a",
                          command_id=uuid.uuid4().hex, timeout_s=60, on_output=on_output)
    capture.append(decoder.finish())
    assert result.outcome == "exit"
    assert total == 10_000_000
    assert capture.total_chars == 10_000_000
    assert capture.head == "a" * 1000
    assert run(backend, sandbox, "echo ok").out == "ok\n"


def test_invalid_utf8_nul_and_split_characters_decode_safely(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    decoder = StreamDecoder()
    pieces: list[str] = []

    def on_output(stream: str, data: bytes) -> None:
        pieces.append(decoder.feed(data))

    # The euro sign's bytes are written in two separate writes (and so, two chunks).
    backend.exec(
        sandbox,
        r"printf 'a\377\000b\n'; printf '\342\202'; "
        r"python3 -c 'import time; time.sleep(0.1)'; printf '\254\n'",
        command_id=uuid.uuid4().hex, timeout_s=20, on_output=on_output,
    )
    text = "".join(pieces) + decoder.finish()
    assert text == "a\ufffdb\n\u20ac\n"


# -- fallback: one docker exec per command -----------------------------------------------


@pytest.fixture(scope="module")
def runnerless_image(backend: DockerBackend, sandbox_image: str) -> str:
    """The sandbox image without the runner (as a project's own image might be)."""
    tag = "agentide-sandbox-test-norunner:latest"
    dockerfile = (f"FROM {sandbox_image}\nUSER root\nRUN rm -rf /opt/agentide\nUSER agent\n")
    subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=dockerfile.encode(),
                   check=True, capture_output=True)
    return tag


def test_images_without_the_runner_fall_back_to_one_exec_per_command(
    backend: DockerBackend, runnerless_image: str, make_sandbox: Callable[..., SandboxHandle]
) -> None:
    handle = make_sandbox(runnerless_image)
    r = run(backend, handle, "mkdir -p d && cd d && export X=42 && echo ok")
    assert r.out == "ok\n"
    assert handle.container_id in backend._no_runner
    r = run(backend, handle, "pwd; echo $X; exit 3")
    assert r.out.splitlines() == ["/workspace/d", "42"]
    assert r.result.exit_code == 3

    r = run(backend, handle, "sleep 9001 & (setsid sleep 9002 &); sleep 9003", timeout_s=1)
    assert r.result.outcome == "timeout"
    wait_for(lambda: _no_leftover(backend, handle, "sleep 900[0-9]"), what="children killed")


def test_images_without_the_runner_still_have_a_terminal(
    backend: DockerBackend, runnerless_image: str, make_sandbox: Callable[..., SandboxHandle]
) -> None:
    handle = make_sandbox(runnerless_image)
    run(backend, handle, "mkdir -p t && cd t && export Y=7")
    pty = backend.open_pty(handle, f"term-{uuid.uuid4().hex[:8]}", rows=24, cols=80)
    screen = Screen(backend, pty)
    backend.write_pty(pty, b"echo at=$PWD y=$Y size=$(stty size).\r")
    assert "at=/workspace/t y=7 size=24 80." in screen.until("size=24 80.\r\n")
    backend.write_pty(pty, b"exit 4\r")
    screen.until_closed()
    assert screen.exit_code == 4


# -- files -------------------------------------------------------------------------------


def test_files_can_be_written_listed_and_read(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    run(backend, sandbox, "mkdir -p /workspace/files/sub")
    backend.write_file(sandbox, "files/hello.txt", b"hello\n", max_bytes=1000)
    assert backend.read_file(sandbox, "files/hello.txt", max_bytes=1000) == b"hello\n"
    # find, not stat: Debian's runsc (2022) answers coreutils' statx() with EINVAL.
    r = run(backend, sandbox, "find /workspace/files/hello.txt -printf '%u %m\\n'; "
                              "cat files/hello.txt")
    assert r.out.splitlines() == ["agent 644", "hello"]

    entries = backend.list_dir(sandbox, "files")
    assert [(e.name, e.kind, e.path) for e in entries] == [
        ("sub", "dir", "files/sub"),
        ("hello.txt", "file", "files/hello.txt"),
    ]
    assert entries[1].size == 6
    assert "files" in {e.name for e in backend.list_dir(sandbox)}


def test_file_size_limits_are_enforced(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    with pytest.raises(SandboxError) as excinfo:
        backend.write_file(sandbox, "too-big", b"x" * 11, max_bytes=10)
    assert excinfo.value.permanent
    run(backend, sandbox, "head -c 5000 /dev/zero > /workspace/big.bin")
    with pytest.raises(SandboxError, match="limit"):
        backend.read_file(sandbox, "big.bin", max_bytes=4000)
    assert len(backend.read_file(sandbox, "big.bin", max_bytes=5000)) == 5000


@pytest.mark.parametrize(
    "path", ["../etc/passwd", "/etc/passwd", "a/../../etc/passwd", "link-etc/passwd",
             "link-passwd", "link-dotdot/etc/passwd"],
)
def test_file_traversal_is_refused(
    backend: DockerBackend, sandbox: SandboxHandle, path: str
) -> None:
    run(backend, sandbox, "ln -sfn /etc /workspace/link-etc; "
                          "ln -sfn /etc/passwd /workspace/link-passwd; "
                          "ln -sfn .. /workspace/link-dotdot")
    with pytest.raises(SandboxError) as excinfo:
        backend.read_file(sandbox, path, max_bytes=100_000)
    assert excinfo.value.permanent
    with pytest.raises(SandboxError):
        backend.write_file(sandbox, path, b"owned", max_bytes=100)
    with pytest.raises(SandboxError):
        backend.list_dir(sandbox, path.rsplit("/", 1)[0] if "/" in path else path)
    assert run(backend, sandbox, "cat /etc/passwd").out.count("owned") == 0


def test_binary_output_is_summarised(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    decoder = StreamDecoder()
    pieces: list[str] = []
    backend.exec(sandbox, "echo start; head -c 200000 /dev/urandom; echo; echo end",
                 command_id=uuid.uuid4().hex, timeout_s=20,
                 on_output=lambda stream, data: pieces.append(decoder.feed(data)))
    text = "".join(pieces) + decoder.finish()
    assert text.startswith("start\n")
    assert "[binary output: " in text
    assert len(text) < 10_000


def test_commands_that_bash_cannot_receive_are_refused_up_front(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    for command in ["echo a\x00b", "echo " + "x" * 200_000]:
        with pytest.raises(SandboxError) as excinfo:
            run(backend, sandbox, command)
        assert excinfo.value.permanent
    long_but_fine = "echo " + "y" * 100_000
    assert len(run(backend, sandbox, long_but_fine).stdout) == 100_001


def test_a_virtualenv_activated_in_one_command_is_active_in_the_next(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    r = run(backend, sandbox, "python3 -m venv --without-pip /workspace/venv "
                              "&& . /workspace/venv/bin/activate && git --version", timeout_s=60)
    assert r.result.exit_code == 0, r.stderr
    r = run(backend, sandbox, "command -v python; python -c 'import sys; print(sys.prefix)'")
    assert r.out.splitlines() == ["/workspace/venv/bin/python", "/workspace/venv"]
    run(backend, sandbox, "deactivate; rm -rf /workspace/venv")


def test_a_cached_runner_connection_that_broke_while_idle_is_replaced(
    backend: DockerBackend, sandbox: SandboxHandle, sandbox_runtime: str
) -> None:
    warm = run(backend, sandbox, "echo warm")
    assert warm.stdout == b"warm\n"
    if sandbox_runtime:
        # Under gVisor no runner connection is kept: every command is its own exec.
        assert warm.result.source == "exec" and sandbox.container_id not in backend._idle
        return
    idle = backend._idle[sandbox.container_id]
    assert idle, "the connection was kept for reuse"
    # The write side goes away under the idle connection (as when its sandbox died and came
    # back): sending the next request fails before anything runs, so it is retried afresh.
    for conn in idle:
        conn.sock.shutdown(socket.SHUT_WR)
    result = run(backend, sandbox, "echo again")
    assert (result.result.outcome, result.stdout) == ("exit", b"again\n")


# -- runtimes and hardening (runc and gVisor) ---------------------------------------------


def test_it_runs_under_the_chosen_runtime(
    backend: DockerBackend, sandbox: SandboxHandle, sandbox_runtime: str
) -> None:
    host_config = backend.api.inspect_container(sandbox.container_id)["HostConfig"]
    assert host_config["Runtime"] == (sandbox_runtime or "runc")
    # gVisor's kernel says so in its (virtual) boot log; runc's host kernel log is not readable.
    booted_gvisor = "gVisor" in run(backend, sandbox, "dmesg 2>&1").out
    assert booted_gvisor == (sandbox_runtime == "runsc")


def test_tmp_is_noexec_and_a_workspace_venv_with_pip_still_works(
    backend: DockerBackend, sandbox: SandboxHandle
) -> None:
    r = run(backend, sandbox, "cp /bin/true /tmp/true && /tmp/true")
    assert r.result.exit_code == 126 and b"Permission denied" in r.stderr, r
    r = run(backend, sandbox, "python3 -m venv /workspace/v && /workspace/v/bin/pip --version",
            timeout_s=120)
    assert r.result.exit_code == 0, r.stderr
    assert r.out.startswith("pip ") and "/workspace/v/" in r.out
    run(backend, sandbox, "rm -rf /workspace/v /tmp/true")


_HARDENING_KEYS = ("Runtime", "NetworkMode", "CapDrop", "SecurityOpt", "Init", "PidsLimit",
                   "Memory", "MemorySwap", "NanoCpus", "Ulimits", "ReadonlyRootfs")


def test_the_fork_copy_helper_runs_with_the_sandbox_limits_runtime_and_hardening(
    backend: DockerBackend, sandbox_image: str, sandbox_runtime: str,
    make_sandbox: Callable[..., SandboxHandle], monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, target = make_sandbox(), make_sandbox()
    run(backend, source, "mkdir -p d && echo copied > d/f && chmod 640 d/f")
    helpers: list[dict[str, object]] = []
    create_container = backend.api.create_container

    def create_and_inspect(*args: object, **kwargs: object) -> dict[str, str]:
        created: dict[str, str] = create_container(*args, **kwargs)
        helpers.append(backend.api.inspect_container(created["Id"]))  # the real container
        return created

    monkeypatch.setattr(backend.api, "create_container", create_and_inspect)
    backend.copy_workspace(source.volume, target.volume, image=sandbox_image,
                           limits=replace(TEST_LIMITS, runtime=sandbox_runtime))
    monkeypatch.undo()

    assert len(helpers) == 1
    helper = helpers[0]
    sandbox_config = backend.api.inspect_container(source.container_id)
    assert helper["Config"]["User"] == sandbox_config["Config"]["User"] == "1000:1000"
    for key in _HARDENING_KEYS:
        assert helper["HostConfig"][key] == sandbox_config["HostConfig"][key], key
    assert helper["HostConfig"]["Runtime"] == (sandbox_runtime or "runc")
    assert run(backend, target, "find d/f -printf '%m '; cat d/f").out.split() == ["640", "copied"]


def test_a_sandbox_that_stops_answering_before_a_command_starts_is_reported_not_running(
    backend: DockerBackend, make_sandbox: Callable[..., SandboxHandle]
) -> None:
    """The runner never says "started" and the socket stays open (as when a container dies
    under gVisor right after start; here: paused): the backend asks the engine after a
    couple of seconds instead of waiting for the command's timeout."""
    handle = make_sandbox()
    assert run(backend, handle, "echo warm").out == "warm\n"  # a cached runner connection
    backend.api.pause(handle.container_id)
    raised: list[BaseException] = []

    def exec_on_the_paused_sandbox() -> None:
        try:
            run(backend, handle, "echo never", timeout_s=3600)
        except SandboxError as exc:
            raised.append(exc)

    thread = threading.Thread(target=exec_on_the_paused_sandbox)
    thread.start()
    try:
        wait_for(lambda: not thread.is_alive(), timeout_s=60, what="exec gave up")
    finally:
        backend.api.unpause(handle.container_id)
        thread.join(60)
    assert len(raised) == 1 and isinstance(raised[0], SandboxNotRunning), raised
    assert run(backend, handle, "echo ok").out == "ok\n"
