#!/usr/bin/env bash
# Run AgentIDE locally: web (Daphne) + worker + beat in the foreground; Ctrl+C stops all three.
# Embedded defaults: SQLite under var/, a local Redis, the local Docker engine.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_packages ca-certificates redis-server docker.io debootstrap
ensure_venv
ensure_docker
[ "${AGENTIDE_SANDBOX_RUNTIME:-}" != runsc ] || ensure_runsc  # gVisor asked for: register it
ensure_redis
ensure_sandbox_image

export PATH="$VENV/bin:$PATH"
say "checking configuration and services"
python manage.py preflight
say "migrating the database"
python manage.py migrate --no-input -v 0
python manage.py bootstrap_admin

export PORT="${PORT:-8000}"
say "AgentIDE is starting on http://127.0.0.1:$PORT/  (Ctrl+C stops web, worker and beat)"
exec honcho -f "$ROOT/Procfile" start
