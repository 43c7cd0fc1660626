#!/usr/bin/env python3
"""AgentIDE in-container command runner (standard library only; installed in the image as
/opt/agentide/runner.py).

    runner.py serve          speak the framed protocol on stdin/stdout (one long-lived
                             ``docker exec`` per sandbox per worker process)
    runner.py kill ID [TOKEN]  kill command ID and everything it started (from another exec)

Protocol. Host -> runner: frames ``>I`` length + UTF-8 JSON object:
    {"op": "run", "id": ID, "command": STR, "timeout": SECONDS, "token": STR}
    {"op": "kill", "id": ID, "token": STR}   kill a command, whichever runner started it
    {"op": "ping", "id": ID}
    {"op": "stats", "id": ID}      the container's cgroup CPU time, memory and pids
    {"op": "ps", "id": ID}         processes that outlived their (finished) commands
    {"op": "pty_open", "id": ID, "rows": N, "cols": N}   a terminal: ``bash -l`` on a PTY
    {"op": "pty_input", "id": ID, "data": BASE64}       bytes typed (at most 64 KiB)
    {"op": "pty_resize", "id": ID, "rows": N, "cols": N}
    {"op": "pty_close", "id": ID}  kill the terminal's shell and everything it started
Runner -> host: frames ``>cIH`` (kind, payload length, id length) + id + payload:
    b"S" started  {"pgid": N}         b"O" stdout bytes    b"E" stderr bytes
    b"X" finished {"outcome": "exit"|"timeout"|"cancelled"|"oom", "exit_code": N|null,
                   "duration": SECONDS, "leftovers": N, "env_refused": [NAME, ...],
                   "env_dropped": N}
    b"R" reply    {...}               (ping and kill answers; also errors for a bad request)
    b"P" terminal opened {"pgid": N}  b"T" terminal output bytes (what the PTY echoed)
    b"Q" terminal closed {"exit_code": N|null}
Output frames carry at most READ_SIZE bytes; the host refuses longer frames, unknown kinds,
ids that are not ``[A-Za-z0-9_.:-]{1,100}`` and payloads that break the schema, and drops the
connection (backends/docker.py ``FrameReader``). "leftovers" counts the command's processes
still running when its shell exited (background processes may outlive their cell);
"env_refused"/"env_dropped" name what the command exported but was not persisted.

Each command runs as ``bash WRAPPER_PATH`` (command.sh, installed in the image) in a new
session (its own process group) with stdin from /dev/null. The wrapper records the process
group id in /tmp/.agentide/ID.pgid, the runner loads the session's working directory and
exported environment from /workspace/.agentide/ and saves them back when the command exits,
so any runner instance (another worker process, or after a restart of the container) carries
the same shell state. Every process of a command inherits AGENTIDE_COMMAND_ID, so a kill also
finds children that left the process group (setsid, double fork) by scanning /proc.

A terminal (``pty_open``) is a login shell on a new PTY, in a session of its own (the PTY is
its controlling terminal), with the session's saved working directory and environment
(loaded with the same refusal rules) and its own marker, so the kill, leftover and
process-limit rules of commands apply to it too. It lives as long as the connection that
opened it: ``pty_close``, the shell exiting, or the host going away ends it, and its
processes are killed.

Trust. Commands run as the runner's uid (1000). The runner is non-dumpable (see
``make_undumpable``): a command can neither ptrace it nor open its pipes through /proc, so
every frame on the host's socket was written by the runner, and output frames carry whatever
bytes a command printed, never frames of their own. What commands can write (files under
/tmp/.agentide and /workspace/.agentide, their own AGENTIDE_COMMAND_ID) is treated as
untrusted: a recorded process group is used only if its leader carries the command's marker,
an outcome is "cancelled" only for a kill this runner received or a kill note carrying
the command's token (an HMAC the host makes with a key commands cannot read), and the persisted
environment is filtered and bounded each time it is written and read. Processes of any cell
can still signal each other (same uid); a kill reaches only the processes that carry the
command's marker or are in its group.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import errno
import fcntl
import hmac
import json
import os
import re
import select
import signal
import struct
import sys
import termios
import time

RUN_DIR = "/tmp/.agentide"  # noqa: S108 - per-container tmpfs, owned by the sandbox user
STATE_DIR = "/workspace/.agentide"
MARKER = "AGENTIDE_COMMAND_ID"
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
READ_SIZE = 65536
HEADER = struct.Struct(">cIH")
REQUEST_HEADER = struct.Struct(">I")
MAX_REQUEST = 16 * 1024 * 1024

# Run by bash for every command (installed next to this file; see command.sh).
WRAPPER_PATH = "/opt/agentide/command.sh"

# Never carried from one command to the next: they make the dynamic loader, bash, Python or
# another interpreter run code of the setter's choosing at the start of every later command,
# including other members' and the agent's. The command that sets one still sees it.
REFUSED_ENV = frozenset({
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "PYTHONSTARTUP",
    "PYTHONINSPECT", "PERL5OPT", "NODE_OPTIONS", "RUBYOPT", "GCONV_PATH", "LOCPATH",
    "HOSTALIASES",
})
REFUSED_ENV_PREFIXES = ("LD_", "BASH_FUNC_")
# Bounds of the persisted environment: past them a later command could not even start
# (execve fails with E2BIG), so the excess is dropped, with a notice.
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 128 * 1024
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_NAMES_REPORTED = 20
PR_SET_DUMPABLE = 4
# Pids kept free for a new command and what it starts: when fewer are left, the processes
# of finished commands are killed before it starts (a fork bomb leaves none otherwise).
RESERVED_PIDS = 16
MAX_LEFTOVERS_LISTED = 50
# Terminals: how many one runner holds, the size bounds, and the input a request may carry
# and the input waiting for the PTY to take it (past that, input is refused, not buffered).
MAX_TERMINALS = 4
MAX_ROWS = 500
MAX_COLS = 1000
MAX_PTY_INPUT = 64 * 1024
MAX_PTY_PENDING = 1024 * 1024
TERMINAL_TERM = "xterm-256color"
PENDING_RETRY_MS = 10


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


def pids_left() -> int | None:
    """How many more processes the container's pids limit allows; None when unlimited or
    unreadable."""
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):  # cgroup v1, v2
        try:
            limit = _read_int(f"{base}/pids.max")
            current = _read_int(f"{base}/pids.current")
        except ValueError:
            return None
        if current is not None:
            return None if limit is None else limit - current
    return None


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


def refused_env_name(name: str) -> bool:
    return name in REFUSED_ENV or name.startswith(REFUSED_ENV_PREFIXES)


def bound_env(dump: bytes) -> tuple[list[bytes], list[str], list[str]]:
    """Split an ``env -0`` dump into the NAME=value items that may persist, the names refused
    (loader/startup variables) and the names dropped past the bounds (count, total size,
    value size), in the dump's order."""
    kept: list[bytes] = []
    refused: list[str] = []
    dropped: list[str] = []
    total = 0
    for item in dump.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            continue
        name = key.decode(errors="replace")
        if refused_env_name(name):
            refused.append(name)
        elif (len(kept) >= MAX_ENV_VARS or len(value) > MAX_ENV_VALUE_BYTES
              or total + len(item) + 1 > MAX_ENV_BYTES):
            dropped.append(name)
        else:
            kept.append(item)
            total += len(item) + 1
    return kept, refused, dropped


def _names(names: list[str]) -> str:
    shown = ", ".join(n[:100] for n in names[:MAX_NAMES_REPORTED])
    more = len(names) - MAX_NAMES_REPORTED
    return shown + (f" and {more} more" if more > 0 else "")


def env_notices(refused: list[str], dropped: list[str], *, saved: bool) -> bytes:
    """The lines a cell shows when variables were refused or dropped."""
    lines = []
    where = "for later commands" if saved else "from the saved environment"
    if refused:
        lines.append(f"agentide: not kept {where}: {_names(refused)} (loader and "
                     "shell-startup variables are never persisted)\n")
    if dropped:
        lines.append(f"agentide: not kept {where}: {_names(dropped)} (the persisted "
                     f"environment is capped at {MAX_ENV_VARS} variables, "
                     f"{MAX_ENV_BYTES // 1024} KiB, {MAX_ENV_VALUE_BYTES // 1024} KiB a value)\n")
    return "".join(lines).encode()


def load_state(base_env: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
    """The session's saved working directory and exported environment (or the defaults),
    and the notice to show when the saved environment held refused or excess variables
    (written there by hand: the runner never saves them)."""
    env = dict(base_env)
    notice = b""
    try:
        with open(f"{STATE_DIR}/env", "rb") as f:
            saved = f.read(4 * MAX_ENV_BYTES)
        if len(saved) == 4 * MAX_ENV_BYTES:
            saved = saved[: saved.rfind(b"\0") + 1]  # no half-read variable
        kept, refused, dropped = bound_env(saved)
        notice = env_notices(refused, dropped, saved=False)
        env = {}
        for item in kept:
            key, _, value = item.partition(b"=")
            env[key.decode(errors="surrogateescape")] = value.decode(errors="surrogateescape")
    except OSError:
        pass
    cwd = "/workspace"
    try:
        with open(f"{STATE_DIR}/cwd", "rb") as f:
            saved_cwd = f.read(8192).rstrip(b"\0").decode(errors="surrogateescape")
        if saved_cwd and os.path.isdir(saved_cwd):
            cwd = saved_cwd
    except (OSError, ValueError):
        pass
    if not os.path.isdir(cwd):
        cwd = "/"
    return cwd, env, notice


def save_state(command_id: str) -> tuple[list[str], list[str]]:
    """Persist the cwd/env a finished command dumped, atomically, for every runner.

    Loader/startup variables are refused and the environment is bounded; returns the names
    (refused, dropped). A command killed before its EXIT trap ran leaves nothing, and the
    previous state stays.
    """
    refused: list[str] = []
    dropped: list[str] = []
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
        return refused, dropped
    for where in (RUN_DIR, STATE_DIR):
        for suffix in (".cwd", ".env"):
            with contextlib.suppress(OSError):
                os.unlink(f"{where}/{command_id}{suffix}")
    if not cwd.endswith(b"\0") or (env and not env.endswith(b"\0")):
        return refused, dropped  # a dump cut short (e.g. /tmp full) must not wipe the env
    kept, refused, dropped = bound_env(env)
    env = b"".join(item + b"\0" for item in kept)
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
    return refused, dropped


def make_undumpable() -> None:
    """Put the runner out of reach of the commands it runs (same uid): a non-dumpable
    process cannot be ptrace()d, nor its /proc/PID/{mem,fd,environ} opened, without
    CAP_SYS_PTRACE, which sandboxes never have. The image also starts the runner from an
    execute-only copy of python3, which makes it non-dumpable from its very first
    instruction (no window in which a waiting command could attach); this call covers images
    where that copy is readable. Commands get the default back: execve resets the flag."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def _proc_marker(pid: int) -> bytes | None:
    """The AGENTIDE_COMMAND_ID value of a process, None when unreadable or unmarked."""
    prefix = MARKER.encode() + b"="
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(prefix):
                    return item[len(prefix):]
    except OSError:
        pass
    return None


def _proc_groups(pid: int) -> tuple[int, int] | None:
    """(process group, session) of a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        # fields: state ppid pgrp session ...
        return int(fields[2]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def _pids() -> list[int]:
    me = os.getpid()
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in (me, 1)]


def _trusted_pgid(command_id: str) -> int | None:
    """The process group a command's wrapper recorded, if its leader still carries that
    command's marker: any command can write that file (same uid), and a planted number
    must not turn a cancel of one cell into a kill of another's processes."""
    try:
        with open(f"{RUN_DIR}/{command_id}.pgid") as f:
            pgid = int(f.read(32).strip())
    except (OSError, ValueError):
        return None
    if pgid > 1 and _proc_marker(pgid) == command_id.encode():
        return pgid
    return None


def kill_command(command_id: str, pgid: int | None = None) -> int:
    """SIGKILL every process of a command: its process group, its session, and anything that
    still carries its AGENTIDE_COMMAND_ID marker. Repeats until nothing is left (a fork bomb
    keeps forking while being killed). Returns how many kill() calls hit a process.

    ``pgid`` is the group the caller started (the runner's own record); without it, the
    recorded group is used only if its leader carries the command's marker.
    """
    if pgid is None:
        pgid = _trusted_pgid(command_id)
    marker = command_id.encode()
    hits = 0
    for _ in range(200):
        found = 0
        if pgid is not None and pgid > 1:
            try:
                os.killpg(pgid, signal.SIGKILL)
                found += 1
            except OSError:
                pass
        for pid in _pids():
            groups = _proc_groups(pid)
            if groups is None:
                continue
            if not (pgid is not None and pgid in groups) and _proc_marker(pid) != marker:
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


def count_leftovers(command_id: str, pgid: int) -> int:
    """Processes of a finished command that still run (in its group or carrying its
    marker): background servers, or the rest of a fork bomb."""
    marker = command_id.encode()
    count = 0
    for pid in _pids():
        groups = _proc_groups(pid)
        if groups is not None and (pgid in groups or _proc_marker(pid) == marker):
            count += 1
    return count


def _running_ids(running: set[str]) -> set[str]:
    """The ids of commands some runner is running: ``running`` (this runner's) and those
    with a process-group record (each runner removes it when its command ends)."""
    with contextlib.suppress(OSError):
        running = running | {n[: -len(".pgid")] for n in os.listdir(RUN_DIR)
                             if n.endswith(".pgid")}
    return running


def list_leftovers(running: set[str]) -> list[dict[str, object]]:
    """Processes of finished commands (at most MAX_LEFTOVERS_LISTED): pid, command id and
    command line (at most 200 characters)."""
    running = _running_ids(running)
    found: list[dict[str, object]] = []
    for pid in sorted(_pids()):
        marker = _proc_marker(pid)
        if marker is None:
            continue
        command_id = marker.decode(errors="replace")
        if command_id in running or not valid_id(command_id):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read(800).replace(b"\0", b" ").strip()
        except OSError:
            continue
        found.append({"pid": pid, "id": command_id,
                      "cmd": cmdline.decode(errors="replace")[:200]})
        if len(found) >= MAX_LEFTOVERS_LISTED:
            break
    return found


def kill_leftovers(running: set[str]) -> int:
    """SIGKILL the processes of commands that have finished (marked with a command id that
    no runner is running), so a new command can start when they use up the pids limit.
    Unmarked processes are not attributable and are left alone. Returns the kills."""
    running = _running_ids(running)
    hits = 0
    for _ in range(200):
        found = 0
        for pid in _pids():
            marker = _proc_marker(pid)
            if marker is None or marker.decode(errors="replace") in running:
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


def mark_cancelled(command_id: str, token: str) -> None:
    """Leave the host's cancel token for whichever runner owns the command."""
    if not token:
        return
    try:
        os.makedirs(RUN_DIR, exist_ok=True)
        with open(f"{RUN_DIR}/{command_id}.cancelled", "w") as f:
            f.write(token)
    except OSError:
        pass


def cancel_noted(command_id: str, token: str) -> bool:
    """True if the command's kill note carries the host's token for it."""
    if not token:
        return False
    try:
        with open(f"{RUN_DIR}/{command_id}.cancelled") as f:
            return hmac.compare_digest(f.read(128), token)
    except (OSError, ValueError, TypeError):
        return False


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


def _winsize(rows: int, cols: int) -> bytes:
    return struct.pack("HHHH", rows, cols, 0, 0)


def _sane_modes(fd: int) -> None:
    """What ``stty sane`` sets (plus UTF-8 input), since kernels differ in a new PTY's
    defaults (gVisor's lacks signal characters): ^C, ^Z, ^\\ signal, echo and line editing."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag |= termios.BRKINT | termios.ICRNL | termios.IXON | getattr(termios, "IUTF8", 0)
    iflag &= ~(termios.INLCR | termios.IGNCR | termios.IXOFF)
    oflag |= termios.OPOST | termios.ONLCR
    cflag |= termios.CREAD | termios.CS8
    lflag |= (termios.ISIG | termios.ICANON | termios.IEXTEN | termios.ECHO | termios.ECHOE
              | termios.ECHOK | termios.ECHOCTL | termios.ECHOKE)
    for name, value in (("VINTR", 3), ("VQUIT", 28), ("VERASE", 127), ("VKILL", 21),
                        ("VEOF", 4), ("VSUSP", 26), ("VSTART", 17), ("VSTOP", 19),
                        ("VWERASE", 23), ("VLNEXT", 22), ("VREPRINT", 18)):
        cc[getattr(termios, name)] = bytes([value])
    cc[termios.VMIN] = bytes([1])
    cc[termios.VTIME] = bytes([0])
    with contextlib.suppress(termios.error):
        termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


def spawn_terminal(env: dict[str, str], cwd: str, rows: int, cols: int) -> tuple[int, int]:
    """Start ``bash -l`` on a new PTY of ``rows`` x ``cols``, in a new session whose
    controlling terminal is that PTY. Returns (pid, master fd)."""
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, _winsize(rows, cols))
    _sane_modes(slave)
    try:
        pid = os.fork()
    except OSError:
        os.close(master)
        os.close(slave)
        raise
    if pid == 0:  # child
        try:
            os.setsid()
            # Opening the PTY by name in the new session makes it the controlling terminal
            # (gVisor ignores TIOCSCTTY on an inherited descriptor); the ioctl covers the
            # kernels that need it.
            with contextlib.suppress(OSError):
                reopened = os.open(os.ttyname(slave), os.O_RDWR)
                os.close(slave)
                slave = reopened
            with contextlib.suppress(OSError):
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            # Python's own and inherited dispositions (docker exec may start the runner with
            # SIGINT ignored, which a shell would pass on): ^C, ^Z, ^\\ must work.
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT,
                        signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
                        signal.SIGHUP, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.closerange(3, 65536)
            os.chdir(cwd)
            os.execve("/bin/bash", ["/bin/bash", "-l"], env)  # noqa: S606 - fixed argv
        finally:
            os._exit(127)
    os.close(slave)
    os.set_blocking(master, False)
    return pid, master


def valid_size(rows: object, cols: object) -> bool:
    return (isinstance(rows, int) and not isinstance(rows, bool) and 1 <= rows <= MAX_ROWS
            and isinstance(cols, int) and not isinstance(cols, bool) and 1 <= cols <= MAX_COLS)


class Terminal:
    def __init__(self, terminal_id: str, pid: int, master: int) -> None:
        self.id = terminal_id
        self.pid = pid
        self.pgid = pid  # setsid: the shell leads its own group
        self.master: int | None = master
        self.returncode: int | None = None
        self.pending = bytearray()  # input the PTY has not taken yet


class Command:
    def __init__(self, command_id: str, pid: int, timeout: float, token: str) -> None:
        self.id = command_id
        self.token = token
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
        # "cancelled" for a kill this runner was asked for, or a kill note that carries the
        # host's token for this command: any command could leave a note for any cell's id.
        exit_code = self.returncode
        killed = exit_code == 128 + signal.SIGKILL
        if self.cancelled or cancel_noted(self.id, self.token):
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
        self.terminals: dict[str, Terminal] = {}
        self.terminal_fds: dict[int, Terminal] = {}
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
        elif op == "ps":
            self.send_json(b"R", command_id, {"processes": list_leftovers(self.running())})
        elif op == "kill":
            mark_cancelled(command_id, str(msg.get("token") or ""))
            cmd = self.commands.get(command_id)
            if cmd is not None:
                cmd.cancelled = True
            hits = kill_command(command_id, cmd.pgid if cmd else None)
            self.send_json(b"R", command_id, {"killed": hits > 0})
        elif op == "run":
            self.start(command_id, str(msg.get("command", "")),
                       float(msg.get("timeout") or 0),  # type: ignore[arg-type]
                       str(msg.get("token") or ""))
        elif op == "pty_open":
            self.open_terminal(command_id, msg.get("rows"), msg.get("cols"))
        elif op == "pty_input":
            self.terminal_input(command_id, msg.get("data"))
        elif op == "pty_resize":
            self.resize_terminal(command_id, msg.get("rows"), msg.get("cols"))
        elif op == "pty_close":
            term = self.terminals.get(command_id)
            if term is not None:
                kill_command(term.id, term.pgid)
            self.send_json(b"R", command_id, {"closed": term is not None})
        else:
            self.send_json(b"R", command_id, {"error": f"unknown op {op!r}"})

    def running(self) -> set[str]:
        return set(self.commands) | set(self.terminals)

    def open_terminal(self, terminal_id: str, rows: object, cols: object) -> None:
        if terminal_id in self.terminals or terminal_id in self.commands:
            self.send_json(b"R", terminal_id, {"error": "id already running"})
            return
        if len(self.terminals) >= MAX_TERMINALS:
            self.send_json(b"R", terminal_id, {"error": "too many terminals"})
            return
        if not valid_size(rows, cols):
            self.send_json(b"R", terminal_id, {"error": "bad terminal size"})
            return
        assert isinstance(rows, int) and isinstance(cols, int)
        with contextlib.suppress(OSError):
            os.makedirs(RUN_DIR, exist_ok=True)
        cwd, env, notice = load_state(self.base_env)
        env[MARKER] = terminal_id
        env["TERM"] = TERMINAL_TERM
        left = pids_left()
        if left is not None and left < RESERVED_PIDS:
            notice += self.make_room()
        try:
            pid, master = spawn_terminal(env, cwd, rows, cols)
        except OSError as exc:
            self.send_json(b"R", terminal_id, {"error": f"cannot start terminal: {exc}"})
            return
        term = Terminal(terminal_id, pid, master)
        self.terminals[terminal_id] = term
        self.terminal_fds[master] = term
        self.poller.register(master, select.POLLIN)
        # Other runners read the .pgid records as "running": they must not take the
        # terminal's processes for leftovers of a finished command.
        with contextlib.suppress(OSError), open(f"{RUN_DIR}/{terminal_id}.pgid", "w") as f:
            f.write(str(pid))
        self.send_json(b"P", terminal_id, {"pgid": pid})
        if notice:
            self.send(b"T", terminal_id, notice.replace(b"\n", b"\r\n"))

    def terminal_input(self, terminal_id: str, data: object) -> None:
        term = self.terminals.get(terminal_id)
        if term is None or term.master is None:
            self.send_json(b"R", terminal_id, {"error": "no such terminal"})
            return
        try:
            raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
        except (binascii.Error, ValueError):
            self.send_json(b"R", terminal_id, {"error": "input is not base64"})
            return
        if len(raw) > MAX_PTY_INPUT or len(term.pending) + len(raw) > MAX_PTY_PENDING:
            self.send_json(b"R", terminal_id, {"error": "terminal input too large"})
            return
        term.pending += raw
        self.flush_input(term)

    def flush_input(self, term: Terminal) -> None:
        if term.master is None:
            term.pending.clear()
            return
        while term.pending:
            try:
                n = os.write(term.master, term.pending)
            except BlockingIOError:
                break
            except OSError:
                term.pending.clear()
                break
            del term.pending[:n]
        self.poller.modify(term.master, select.POLLIN | (select.POLLOUT if term.pending else 0))

    def resize_terminal(self, terminal_id: str, rows: object, cols: object) -> None:
        term = self.terminals.get(terminal_id)
        if term is None or term.master is None:
            self.send_json(b"R", terminal_id, {"error": "no such terminal"})
            return
        if not valid_size(rows, cols):
            self.send_json(b"R", terminal_id, {"error": "bad terminal size"})
            return
        assert isinstance(rows, int) and isinstance(cols, int)
        with contextlib.suppress(OSError):
            fcntl.ioctl(term.master, termios.TIOCSWINSZ, _winsize(rows, cols))

    def read_terminal(self, term: Terminal, *, drain: bool) -> None:
        while term.master is not None:
            try:
                data = os.read(term.master, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:  # EIO: no process holds the PTY any more
                data = b""
            if not data:
                self.close_terminal_fd(term)
                return
            self.send(b"T", term.id, data)
            if not drain:
                return

    def close_terminal_fd(self, term: Terminal) -> None:
        if term.master is None:
            return
        self.poller.unregister(term.master)
        del self.terminal_fds[term.master]
        os.close(term.master)
        term.master = None

    def start(self, command_id: str, command: str, timeout: float, token: str) -> None:
        if command_id in self.commands:
            self.send_json(b"R", command_id, {"error": "command id already running"})
            return
        # A full /tmp only costs the pgid file; kill still finds the marker.
        with contextlib.suppress(OSError):
            os.makedirs(RUN_DIR, exist_ok=True)
        cwd, env, notice = load_state(self.base_env)
        env[MARKER] = command_id
        argv = ["/bin/bash", "--noprofile", "--norc", WRAPPER_PATH, command, command_id, "runner"]
        left = pids_left()
        if left is not None and left < RESERVED_PIDS:
            notice += self.make_room()
        try:
            try:
                pid, out_fd, err_fd = spawn(argv, env, cwd)
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
                notice += self.make_room()
                pid, out_fd, err_fd = spawn(argv, env, cwd)
        except OSError as exc:
            # Still no room (the processes belong to running commands): report, do not die.
            notice += f"agentide: cannot start command: {exc}\n".encode()
            self.send(b"E", command_id, notice)
            self.send_json(b"X", command_id, {"outcome": "exit", "exit_code": 126,
                                              "duration": 0.0, "leftovers": 0})
            return
        cmd = Command(command_id, pid, timeout, token)
        self.commands[command_id] = cmd
        for fd, kind in ((out_fd, b"O"), (err_fd, b"E")):
            os.set_blocking(fd, False)
            cmd.fds[fd] = kind
            self.by_fd[fd] = cmd
            self.poller.register(fd, select.POLLIN)
        self.send_json(b"S", command_id, {"pgid": cmd.pgid})
        if notice:
            self.send(b"E", command_id, notice)

    def make_room(self) -> bytes:
        """Kill the processes that outlived their (finished) commands, because they used
        up the pids limit (a fork bomb, or too many servers): a new command always gets
        room, at their cost. Returns the notice for the new command's output."""
        killed = kill_leftovers(self.running())
        if not killed:
            return b""
        return (f"agentide: the sandbox reached its process limit; killed {killed} leftover "
                "processes of finished commands\n").encode()

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

    def reap_terminals(self) -> None:
        for term in list(self.terminals.values()):
            try:
                pid, status = os.waitpid(term.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = term.pid, 127 << 8
            if pid == 0:
                continue
            code = os.waitstatus_to_exitcode(status)
            # The shell is gone: forward what it echoed last, then end what it left behind
            # (a closed terminal hangs up on its jobs).
            self.read_terminal(term, drain=True)
            kill_command(term.id, term.pgid)
            self.read_terminal(term, drain=True)
            self.close_terminal_fd(term)
            with contextlib.suppress(OSError):
                os.unlink(f"{RUN_DIR}/{term.id}.pgid")
            del self.terminals[term.id]
            self.send_json(b"Q", term.id, {"exit_code": 128 - code if code < 0 else code})

    def reap(self) -> None:
        self.reap_terminals()
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
            refused, dropped = save_state(cmd.id)
            outcome = cmd.outcome()  # before the .cancelled note is cleaned up
            for suffix in (".pgid", ".cancelled"):
                with contextlib.suppress(OSError):
                    os.unlink(f"{RUN_DIR}/{cmd.id}{suffix}")
            leftovers = count_leftovers(cmd.id, cmd.pgid)
            notice = env_notices(refused, dropped, saved=True)
            if leftovers:
                notice += (f"agentide: {leftovers} processes started by this command are "
                           "still running\n").encode()
            if notice:
                self.send(b"E", cmd.id, notice)
            outcome.update(leftovers=leftovers, env_refused=refused[:MAX_NAMES_REPORTED],
                           env_dropped=len(dropped))
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
        while alive or self.commands or self.terminals:
            timeout = self.check_deadlines()
            ms = None if timeout is None else max(1, int(timeout * 1000) + 1)
            waiting = [t for t in self.terminals.values() if t.pending]
            if waiting:
                # POLLOUT on a PTY master is not reported by every kernel (gVisor): retry
                # input the PTY could not take yet on a short tick as well.
                ms = PENDING_RETRY_MS if ms is None else min(ms, PENDING_RETRY_MS)
                for term in waiting:
                    self.flush_input(term)
            for fd, events in self.poller.poll(ms):
                owner = self.terminal_fds.get(fd)
                if owner is not None:
                    if events & select.POLLOUT:
                        self.flush_input(owner)
                    if events & ~select.POLLOUT:
                        self.read_terminal(owner, drain=False)
                elif fd == self.inp:
                    if not self.read_requests():
                        # The host went away: nobody will read the output, so stop.
                        alive = False
                        self.poller.unregister(self.inp)
                        for cmd in self.commands.values():
                            cmd.cancelled = True
                            kill_command(cmd.id, cmd.pgid)
                        for term in self.terminals.values():
                            kill_command(term.id, term.pgid)
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
        make_undumpable()
        try:
            Server().serve()
        except BrokenPipeError:
            return 1
        return 0
    if len(argv) in (3, 4) and argv[1] == "kill" and valid_id(argv[2]):
        mark_cancelled(argv[2], argv[3] if len(argv) == 4 else "")
        hits = kill_command(argv[2])
        print(json.dumps({"killed": hits > 0}))
        return 0
    print("usage: runner.py serve | runner.py kill COMMAND_ID [TOKEN]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
