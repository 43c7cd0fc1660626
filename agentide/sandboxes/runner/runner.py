#!/usr/bin/env python3
"""AgentIDE in-container command runner (standard library only; installed in the image as
/opt/agentide/runner.py).

    runner.py serve          speak the framed protocol on stdin/stdout (one long-lived
                             ``docker exec`` per sandbox per worker process)
    runner.py kill ID        kill command ID and everything it started (from another exec)

Protocol. Host -> runner: frames ``>I`` length + UTF-8 JSON object:
    {"op": "run", "id": ID, "command": STR, "timeout": SECONDS}
    {"op": "kill", "id": ID}       kill a command, whichever runner started it
    {"op": "ping", "id": ID}
    {"op": "stats", "id": ID}      the container's cgroup CPU time, memory and pids
Runner -> host: frames ``>cIH`` (kind, payload length, id length) + id + payload:
    b"S" started  {"pgid": N}         b"O" stdout bytes    b"E" stderr bytes
    b"X" finished {"outcome": "exit"|"timeout"|"cancelled"|"oom", "exit_code": N|null,
                   "duration": SECONDS}
    b"R" reply    {...}               (ping and kill answers; also errors for a bad request)

Each command runs as ``bash -c WRAPPER`` in a new session (its own process group) with stdin
from /dev/null. The wrapper records the process group id in /tmp/.agentide/ID.pgid, loads the
session's working directory and exported environment from /workspace/.agentide/ and saves
them back when the command exits, so any runner instance (another worker process, or after a
restart of the container) carries the same shell state. Every process of a command inherits
AGENTIDE_COMMAND_ID, so a kill also finds children that left the process group (setsid,
double fork) by scanning /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import struct
import sys
import time

RUN_DIR = "/tmp/.agentide"  # noqa: S108 - per-container tmpfs, owned by the sandbox user
STATE_DIR = "/workspace/.agentide"
MARKER = "AGENTIDE_COMMAND_ID"
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
READ_SIZE = 65536
HEADER = struct.Struct(">cIH")
REQUEST_HEADER = struct.Struct(">I")
MAX_REQUEST = 16 * 1024 * 1024

# Run by bash for every command: $1 = command, $2 = command id, $3 = mode.
# Mode "runner": the runner passed the saved cwd/env in already and persists the state that
# the EXIT trap dumps into /tmp/.agentide/ID.{cwd,env} (fewer forks on the fast path).
# Mode "standalone" (the host's one-exec-per-command fallback): the wrapper loads and saves
# /workspace/.agentide/{cwd,env} itself.
# Shell variables start with __agentide_ to stay out of the user's way; only exported
# variables are saved.
SHELL_WRAPPER = r"""
__agentide_cmd="$1"; __agentide_id="$2"; __agentide_mode="$3"; set --
__agentide_run=/tmp/.agentide; __agentide_state=/workspace/.agentide
builtin read -r _ _ _ _ __agentide_pgid _ < /proc/$$/stat
builtin echo "$__agentide_pgid" > "$__agentide_run/$__agentide_id.pgid" 2>/dev/null
# Make a command the OOM killer's first choice, before the runner or the container's init.
builtin echo 1000 > /proc/$$/oom_score_adj 2>/dev/null
if [ "$__agentide_mode" = standalone ]; then
    if [ -r "$__agentide_state/env" ]; then
        for __agentide_v in $(compgen -e); do
            [ "$__agentide_v" = AGENTIDE_COMMAND_ID ] || unset "$__agentide_v"
        done
        while IFS= builtin read -r -d '' __agentide_kv; do
            builtin export "$__agentide_kv" 2>/dev/null
        done < "$__agentide_state/env"
        unset __agentide_v __agentide_kv
    fi
    if [ -r "$__agentide_state/cwd" ]; then
        IFS= builtin read -r -d '' __agentide_cwd < "$__agentide_state/cwd"
        builtin cd -- "$__agentide_cwd" 2>/dev/null || builtin cd /workspace
        unset __agentide_cwd
    fi
    __agentide_out="$__agentide_state"
    mkdir -p "$__agentide_out" 2>/dev/null
else
    __agentide_out="$__agentide_run"
fi
__agentide_save() {
    __agentide_rc=$?
    # Dump to the runner's dir, or to the workspace when /tmp is full.
    for __agentide_dir in "$__agentide_out" "$__agentide_state"; do
        { builtin printf '%s\0' "$PWD" > "$__agentide_dir/$__agentide_id.cwd" &&
          env -0 -u PWD -u OLDPWD -u SHLVL -u _ -u AGENTIDE_COMMAND_ID \
              > "$__agentide_dir/$__agentide_id.env"; } 2>/dev/null && break
        rm -f "$__agentide_dir/$__agentide_id.env" "$__agentide_dir/$__agentide_id.cwd" 2>/dev/null
        __agentide_out="$__agentide_state"
    done
    if [ "$__agentide_mode" = standalone ]; then
        { mv -f "$__agentide_out/$__agentide_id.env" "$__agentide_state/env" &&
          mv -f "$__agentide_out/$__agentide_id.cwd" "$__agentide_state/cwd"; } 2>/dev/null
        rm -f "$__agentide_out/$__agentide_id.env" "$__agentide_out/$__agentide_id.cwd" 2>/dev/null
    fi
    return $__agentide_rc
}
trap __agentide_save EXIT
eval "$__agentide_cmd"
"""


def valid_id(command_id: object) -> bool:
    return isinstance(command_id, str) and bool(ID_RE.match(command_id))


def oom_kills() -> int:
    """The container's OOM-kill counter (cgroup v1 or v2); 0 when unreadable."""
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            value = f.read().split()[0]
    except (OSError, IndexError):
        return None
    return None if value == "max" else int(value)


def _stat_value(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_stats() -> dict[str, object]:
    """The container's CPU time (ns), memory (bytes, page cache excluded), memory limit and
    process count, from its cgroup (v1 or v2)."""
    root = "/sys/fs/cgroup"
    if os.path.exists(f"{root}/memory/memory.usage_in_bytes"):  # cgroup v1
        cpu = _read_int(f"{root}/cpuacct/cpuacct.usage") or 0
        memory = (_read_int(f"{root}/memory/memory.usage_in_bytes") or 0) - _stat_value(
            f"{root}/memory/memory.stat", "total_inactive_file")
        limit = _read_int(f"{root}/memory/memory.limit_in_bytes")
        pids = _read_int(f"{root}/pids/pids.current") or 0
    else:  # cgroup v2
        cpu = _stat_value(f"{root}/cpu.stat", "usage_usec") * 1000
        memory = (_read_int(f"{root}/memory.current") or 0) - _stat_value(
            f"{root}/memory.stat", "inactive_file")
        limit = _read_int(f"{root}/memory.max")
        pids = _read_int(f"{root}/pids.current") or 0
    return {"cpu_ns": cpu, "memory": max(memory, 0), "memory_limit": limit or 0,
            "pids": pids, "clock_ns": time.monotonic_ns()}


def load_state(base_env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The session's saved working directory and exported environment (or the defaults)."""
    env = dict(base_env)
    try:
        with open(f"{STATE_DIR}/env", "rb") as f:
            saved = f.read()
        env = {}
        for item in saved.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep and key:
                env[key.decode(errors="surrogateescape")] = value.decode(errors="surrogateescape")
    except OSError:
        pass
    cwd = "/workspace"
    try:
        with open(f"{STATE_DIR}/cwd", "rb") as f:
            saved_cwd = f.read().rstrip(b"\0").decode(errors="surrogateescape")
        if saved_cwd and os.path.isdir(saved_cwd):
            cwd = saved_cwd
    except OSError:
        pass
    if not os.path.isdir(cwd):
        cwd = "/"
    return cwd, env


def save_state(command_id: str) -> None:
    """Persist the cwd/env a finished command dumped, atomically, for every runner.

    A command killed before its EXIT trap ran leaves nothing, and the previous state stays.
    """
    for where in (RUN_DIR, STATE_DIR):  # STATE_DIR when /tmp was full
        try:
            with open(f"{where}/{command_id}.cwd", "rb") as f:
                cwd = f.read()
            with open(f"{where}/{command_id}.env", "rb") as f:
                env = f.read()
            break
        except OSError:
            continue
    else:
        return
    for where in (RUN_DIR, STATE_DIR):
        for suffix in (".cwd", ".env"):
            with contextlib.suppress(OSError):
                os.unlink(f"{where}/{command_id}{suffix}")
    if not cwd.endswith(b"\0") or (env and not env.endswith(b"\0")):
        return  # a dump cut short (e.g. /tmp full) must not wipe the environment
    try:
        os.makedirs(STATE_DIR, exist_ok=True)
        for name, data in (("env", env), ("cwd", cwd)):
            tmp = f"{STATE_DIR}/.{name}.{os.getpid()}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, f"{STATE_DIR}/{name}")
            except OSError:
                os.unlink(tmp)
                raise
    except OSError:
        pass  # /workspace full: keep the previous state


def mark_cancelled(command_id: str) -> None:
    """Leave a note so whichever runner owns the command reports it as cancelled."""
    try:
        os.makedirs(RUN_DIR, exist_ok=True)
        with open(f"{RUN_DIR}/{command_id}.cancelled", "w"):
            pass
    except OSError:
        pass


def _proc_matches(pid: int, pgid: int | None, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        # fields: state ppid pgrp session ...
        if pgid is not None and (int(fields[2]) == pgid or int(fields[3]) == pgid):
            return True
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False


def kill_command(command_id: str, pgid: int | None = None) -> int:
    """SIGKILL every process of a command: its process group, its session, and anything that
    still carries its AGENTIDE_COMMAND_ID marker. Repeats until nothing is left (a fork bomb
    keeps forking while being killed). Returns how many kill() calls hit a process.
    """
    if pgid is None:
        try:
            with open(f"{RUN_DIR}/{command_id}.pgid") as f:
                pgid = int(f.read().strip())
        except (OSError, ValueError):
            pgid = None
    marker = f"{MARKER}={command_id}".encode()
    me = os.getpid()
    hits = 0
    for _ in range(200):
        found = 0
        if pgid is not None and pgid > 1:
            try:
                os.killpg(pgid, signal.SIGKILL)
                found += 1
            except OSError:
                pass
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid in (me, 1) or not _proc_matches(pid, pgid, marker):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                found += 1
            except OSError:
                pass
        hits += found
        if not found:
            break
    return hits


def spawn(argv: list[str], env: dict[str, str], cwd: str) -> tuple[int, int, int]:
    """Start ``argv`` in a new session (its own process group) with stdin from /dev/null.

    Returns (pid, stdout fd, stderr fd). Plain fork/exec rather than ``subprocess``: the
    runner is single-threaded, and not importing subprocess makes its start faster.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    if pid == 0:  # child
        try:
            os.setsid()
            # Python ignores these; a command must get the default behaviour back.
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.closerange(3, 65536)
            os.chdir(cwd)
            os.execve(argv[0], argv, env)  # noqa: S606 - argv is bash + the wrapper
        finally:
            os._exit(127)
    os.close(out_w)
    os.close(err_w)
    return pid, out_r, err_r


class Command:
    def __init__(self, command_id: str, pid: int, timeout: float) -> None:
        self.id = command_id
        self.pid = pid
        self.pgid = pid  # setsid: the child leads its own group
        self.returncode: int | None = None
        self.started = time.monotonic()
        self.deadline = self.started + timeout if timeout > 0 else None
        self.oom_before = oom_kills()
        self.timed_out = False
        self.cancelled = False
        self.fds: dict[int, bytes] = {}

    def outcome(self) -> dict[str, object]:
        exit_code = self.returncode
        killed = exit_code == 128 + signal.SIGKILL
        if self.cancelled or os.path.exists(f"{RUN_DIR}/{self.id}.cancelled"):
            outcome = "cancelled"
        elif self.timed_out:
            outcome = "timeout"
        elif killed and oom_kills() > self.oom_before:
            outcome = "oom"
        else:
            outcome = "exit"
        return {
            "outcome": outcome,
            "exit_code": exit_code,
            "duration": round(time.monotonic() - self.started, 6),
        }


class Server:
    def __init__(self) -> None:
        self.out = sys.stdout.buffer.fileno()
        self.inp = sys.stdin.buffer.fileno()
        self.commands: dict[str, Command] = {}
        self.by_fd: dict[int, Command] = {}
        self.inbuf = bytearray()
        self.poller = select.poll()
        self.poller.register(self.inp, select.POLLIN)
        # Child exits wake the poll loop through a self-pipe.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        self.poller.register(self.wake_r, select.POLLIN)
        self.base_env = {k: v for k, v in os.environ.items() if k != MARKER}

    def send(self, kind: bytes, command_id: str, payload: bytes) -> None:
        ident = command_id.encode()
        data = HEADER.pack(kind, len(payload), len(ident)) + ident + payload
        view = memoryview(data)
        while view:
            n = os.write(self.out, view)
            view = view[n:]

    def send_json(self, kind: bytes, command_id: str, obj: dict[str, object]) -> None:
        self.send(kind, command_id, json.dumps(obj).encode())

    def handle(self, msg: dict[str, object]) -> None:
        op = msg.get("op")
        command_id = msg.get("id")
        if not valid_id(command_id):
            self.send_json(b"R", "", {"error": "invalid command id"})
            return
        assert isinstance(command_id, str)
        if op == "ping":
            self.send_json(b"R", command_id, {"pong": True, "pid": os.getpid()})
        elif op == "stats":
            self.send_json(b"R", command_id, cgroup_stats())
        elif op == "kill":
            mark_cancelled(command_id)
            cmd = self.commands.get(command_id)
            if cmd is not None:
                cmd.cancelled = True
            hits = kill_command(command_id, cmd.pgid if cmd else None)
            self.send_json(b"R", command_id, {"killed": hits > 0})
        elif op == "run":
            self.start(command_id, str(msg.get("command", "")), float(msg.get("timeout") or 0))  # type: ignore[arg-type]
        else:
            self.send_json(b"R", command_id, {"error": f"unknown op {op!r}"})

    def start(self, command_id: str, command: str, timeout: float) -> None:
        if command_id in self.commands:
            self.send_json(b"R", command_id, {"error": "command id already running"})
            return
        # A full /tmp only costs the pgid file; kill still finds the marker.
        with contextlib.suppress(OSError):
            os.makedirs(RUN_DIR, exist_ok=True)
        cwd, env = load_state(self.base_env)
        env[MARKER] = command_id
        argv = ["/bin/bash", "--noprofile", "--norc", "-c", SHELL_WRAPPER, "agentide",
                command, command_id, "runner"]
        try:
            pid, out_fd, err_fd = spawn(argv, env, cwd)
        except OSError as exc:
            # e.g. EAGAIN when the pids limit is exhausted: report, do not die.
            self.send(b"E", command_id, f"agentide: cannot start command: {exc}\n".encode())
            self.send_json(b"X", command_id, {"outcome": "exit", "exit_code": 126, "duration": 0.0})
            return
        cmd = Command(command_id, pid, timeout)
        self.commands[command_id] = cmd
        for fd, kind in ((out_fd, b"O"), (err_fd, b"E")):
            os.set_blocking(fd, False)
            cmd.fds[fd] = kind
            self.by_fd[fd] = cmd
            self.poller.register(fd, select.POLLIN)
        self.send_json(b"S", command_id, {"pgid": cmd.pgid})

    def read_fd(self, fd: int, *, drain: bool) -> None:
        cmd = self.by_fd.get(fd)
        if cmd is None:
            return
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close_fd(fd)
                return
            self.send(cmd.fds[fd], cmd.id, data)
            if not drain:
                return

    def close_fd(self, fd: int) -> None:
        cmd = self.by_fd.pop(fd, None)
        if cmd is None:
            return
        self.poller.unregister(fd)
        del cmd.fds[fd]
        os.close(fd)

    def reap(self) -> None:
        for cmd in list(self.commands.values()):
            try:
                pid, status = os.waitpid(cmd.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = cmd.pid, 127 << 8
            if pid == 0:
                continue
            cmd.returncode = os.waitstatus_to_exitcode(status)
            if cmd.returncode < 0:
                cmd.returncode = 128 - cmd.returncode  # killed by a signal, as a shell says
            # The shell is gone: forward what it wrote, then stop listening (a background
            # child may hold the pipe open for as long as it lives).
            for fd in list(cmd.fds):
                self.read_fd(fd, drain=True)
            for fd in list(cmd.fds):
                self.close_fd(fd)
            if cmd.timed_out or cmd.cancelled:
                kill_command(cmd.id, cmd.pgid)
            save_state(cmd.id)
            outcome = cmd.outcome()  # before the .cancelled note is cleaned up
            for suffix in (".pgid", ".cancelled"):
                with contextlib.suppress(OSError):
                    os.unlink(f"{RUN_DIR}/{cmd.id}{suffix}")
            self.send_json(b"X", cmd.id, outcome)
            del self.commands[cmd.id]

    def check_deadlines(self) -> float | None:
        now = time.monotonic()
        nearest: float | None = None
        for cmd in self.commands.values():
            if cmd.deadline is None or cmd.timed_out:
                continue
            if now >= cmd.deadline:
                cmd.timed_out = True
                kill_command(cmd.id, cmd.pgid)
            else:
                left = cmd.deadline - now
                nearest = left if nearest is None else min(nearest, left)
        return nearest

    def read_requests(self) -> bool:
        data = os.read(self.inp, READ_SIZE)
        if not data:
            return False
        self.inbuf += data
        while len(self.inbuf) >= REQUEST_HEADER.size:
            (size,) = REQUEST_HEADER.unpack_from(self.inbuf)
            if size > MAX_REQUEST:
                raise SystemExit("request too large")
            if len(self.inbuf) < REQUEST_HEADER.size + size:
                break
            body = bytes(self.inbuf[REQUEST_HEADER.size : REQUEST_HEADER.size + size])
            del self.inbuf[: REQUEST_HEADER.size + size]
            try:
                msg = json.loads(body)
            except ValueError:
                self.send_json(b"R", "", {"error": "bad request"})
                continue
            if isinstance(msg, dict):
                self.handle(msg)
        return True

    def serve(self) -> None:
        self.send_json(b"R", "", {"ready": True, "pid": os.getpid()})
        alive = True
        while alive or self.commands:
            timeout = self.check_deadlines()
            ms = None if timeout is None else max(1, int(timeout * 1000) + 1)
            for fd, _ in self.poller.poll(ms):
                if fd == self.inp:
                    if not self.read_requests():
                        # The host went away: nobody will read the output, so stop.
                        alive = False
                        self.poller.unregister(self.inp)
                        for cmd in self.commands.values():
                            cmd.cancelled = True
                            kill_command(cmd.id, cmd.pgid)
                elif fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self.read_fd(fd, drain=False)
            self.reap()


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[1] == "serve":
        try:
            Server().serve()
        except BrokenPipeError:
            return 1
        return 0
    if len(argv) == 3 and argv[1] == "kill" and valid_id(argv[2]):
        mark_cancelled(argv[2])
        hits = kill_command(argv[2])
        print(json.dumps({"killed": hits > 0}))
        return 0
    print("usage: runner.py serve | runner.py kill COMMAND_ID", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
