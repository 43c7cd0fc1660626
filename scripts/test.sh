#!/usr/bin/env bash
# Run the whole test suite against real services: PostgreSQL, Redis, the Docker engine,
# a Celery worker, Daphne and Debian's Chromium. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_packages ca-certificates redis-server docker.io debootstrap postgresql chromium fonts-dejavu-core
ensure_venv dev
export REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/1}"
ensure_docker
ensure_runsc  # the sandbox suites run under runc and gVisor
ensure_redis
ensure_postgres
ensure_sandbox_image

export PATH="$VENV/bin:$PATH"
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://agentide:agentide@127.0.0.1:5432/agentide}"
export AGENTIDE_VAR_DIR="$VAR/test"
export AGENTIDE_TEST_ARTIFACTS="$ROOT/var/test-artifacts"
mkdir -p "$AGENTIDE_VAR_DIR" "$AGENTIDE_TEST_ARTIFACTS"

say "ruff"
ruff check .
say "mypy"
mypy
say "migrations are complete"
python manage.py makemigrations --check --dry-run >/dev/null \
  || die "models changed without a migration: run python manage.py makemigrations"
say "pytest"
pytest "$@"
