# Shared helpers of scripts/run.sh and scripts/test.sh. Source it; do not run it.
# Each helper is idempotent: it checks first, then installs or starts only what is missing.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="${AGENTIDE_VAR_DIR:-$ROOT/var}"
VENV="$ROOT/.venv"
mkdir -p "$VAR/log"

say() { printf '\033[1;32m==>\033[0m %s\n' "$*"; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# ensure_packages PKG...: install missing Debian packages (as root), or say how to.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]}, and this is not a Debian/Ubuntu system: install them by hand."
  is_root || die "missing Debian packages: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}"
  say "installing ${missing[*]}"
  if [ ! -f "$VAR/.apt-updated" ] || [ -n "$(find "$VAR/.apt-updated" -mmin +1440 2>/dev/null)" ]; then
    apt-get update -q >"$VAR/log/apt.log" 2>&1 || die "apt-get update failed (see $VAR/log/apt.log)."
    touch "$VAR/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >>"$VAR/log/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed (see $VAR/log/apt.log)."
}

# ensure_venv [EXTRAS]: a virtualenv with the package installed (editable), refreshed when
# pyproject.toml changes.
ensure_venv() {
  local extras="${1:-}"
  command -v python3 >/dev/null || die "python3 is missing: sudo apt-get install -y python3 python3-venv"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python 3.11 or newer is needed; found $(python3 --version 2>&1)."
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtualenv in $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed: sudo apt-get install -y python3-venv"
  fi
  local stamp="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)${extras:+-$extras}"
  if [ ! -f "$stamp" ]; then
    say "installing Python packages${extras:+ (with $extras)}"
    "$VENV/bin/pip" install -q --upgrade pip >"$VAR/log/pip.log" 2>&1 || true
    "$VENV/bin/pip" install -q -e "$ROOT${extras:+[$extras]}" >>"$VAR/log/pip.log" 2>&1 \
      || die "pip install failed (see $VAR/log/pip.log)."
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds or time runs out.
wait_for() {
  local seconds="$1" what="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.3
  done
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  command -v dockerd >/dev/null || ensure_packages docker.io
  is_root || die "the Docker engine is not running and only root can start it: sudo dockerd --bridge=none --iptables=false &"
  say "starting the Docker engine (no bridge network: sandboxes run with network_mode=none)"
  # setsid: the engine outlives this script and the shell that ran it.
  setsid nohup dockerd --bridge=none --iptables=false >"$VAR/log/dockerd.log" 2>&1 < /dev/null &
  wait_for 60 docker docker info || die "dockerd did not start (see $VAR/log/dockerd.log)."
}

# ensure_runsc: gVisor's runsc (the Debian package) registered with the engine as the runtime
# "runsc", for AGENTIDE_SANDBOX_RUNTIME=runsc. gVisor's own network stack is off
# (--network=none; sandboxes have network_mode=none anyway). The entry is merged into
# /etc/docker/daemon.json and a running dockerd reloads it on SIGHUP: runtimes are reloadable,
# so the engine and the containers on it are never restarted.
RUNSC_DAEMON_JSON=/etc/docker/daemon.json
engine_has_runsc() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }
ensure_runsc() {
  ensure_packages runsc
  engine_has_runsc && return 0
  is_root || die "the Docker engine has no runsc runtime and only root can register it: add \"runtimes\": {\"runsc\": {\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"--network=none\"]}} to $RUNSC_DAEMON_JSON, then sudo kill -HUP \$(pidof dockerd)"
  say "registering gVisor (runsc) with the Docker engine in $RUNSC_DAEMON_JSON"
  mkdir -p "$(dirname "$RUNSC_DAEMON_JSON")"
  python3 - "$RUNSC_DAEMON_JSON" "$(command -v runsc)" <<'PY' || die "could not update $RUNSC_DAEMON_JSON (is it valid JSON?)"
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
config = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    config = json.loads(text) if text else {}
config.setdefault("runtimes", {})["runsc"] = {"path": runsc, "runtimeArgs": ["--network=none"]}
with open(path + ".tmp", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
PY
  local pid
  pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -HUP "$pid"  # reload the configuration; a restart would stop every container
  else
    ensure_docker
  fi
  wait_for 30 runsc engine_has_runsc \
    || die "the engine does not list the runsc runtime after reloading $RUNSC_DAEMON_JSON (see the dockerd log)."
}

ensure_redis() {
  local url="${REDIS_URL:-redis://127.0.0.1:6379/0}"
  if redis-cli -u "$url" ping 2>/dev/null | grep -q PONG; then return 0; fi
  case "$url" in
    redis://127.0.0.1:6379/*|redis://localhost:6379/*) ;;
    *) die "REDIS_URL=$url is unreachable and is not the local default: start that Redis first." ;;
  esac
  command -v redis-server >/dev/null || ensure_packages redis-server
  say "starting redis-server on 127.0.0.1:6379"
  mkdir -p "$VAR/redis"
  setsid redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --dir "$VAR/redis" \
    --save "" --appendonly no --logfile "$VAR/log/redis.log" >/dev/null \
    || die "redis-server did not start (see $VAR/log/redis.log)."
  wait_for 20 redis redis-cli -u "$url" ping || die "redis-server did not answer (see $VAR/log/redis.log)."
}

# ensure_postgres: a local PostgreSQL cluster with an agentide role that may create databases.
ensure_postgres() {
  ensure_packages postgresql
  local version
  version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"
  [ -n "$version" ] || die "postgresql is installed but has no cluster: sudo pg_createcluster 15 main"
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $4}' | grep -q online; then
    is_root || die "PostgreSQL is not running: sudo pg_ctlcluster $version main start"
    say "starting PostgreSQL $version"
    pg_ctlcluster "$version" main start || die "PostgreSQL did not start (journal: /var/log/postgresql/)."
  fi
  wait_for 30 postgres su postgres -c "psql -qtAc 'select 1'" || die "PostgreSQL does not answer."
  su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='agentide'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"create role agentide login createdb password 'agentide'\"" >/dev/null
  su postgres -c "psql -qtAc \"select 1 from pg_database where datname='agentide'\"" | grep -q 1 \
    || su postgres -c "createdb -O agentide agentide"
}

ensure_sandbox_image() {
  command -v debootstrap >/dev/null || ensure_packages debootstrap
  "$ROOT/compose/sandbox/build.sh" || die "building the sandbox image failed (see the output above)."
}
