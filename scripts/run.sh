#!/usr/bin/env bash
# `make run`: migrate, bootstrap the demo organization, start the offline simulator if no vendor is set, serve.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
SIMULATOR_PORT="${SIMULATOR_PORT:-8765}"
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-portal.settings.development}"
mkdir -p data

"$PY" manage.py migrate --noinput

simulator_pid=""
cleanup() { [ -n "$simulator_pid" ] && kill "$simulator_pid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
if [ -z "${OPENAI_API_KEY:-}${ANTHROPIC_API_KEY:-}${OPENAI_BASE_URL:-}" ]; then
  "$PY" -m providers.simulator --host 127.0.0.1 --port "$SIMULATOR_PORT" >data/simulator.log 2>&1 &
  simulator_pid=$!
  export AIRLOCK_SIMULATOR_URL="http://127.0.0.1:${SIMULATOR_PORT}/v1"
  echo "No OPENAI_API_KEY, ANTHROPIC_API_KEY or OPENAI_BASE_URL set: using the offline model simulator on ${AIRLOCK_SIMULATOR_URL}"
fi

"$PY" manage.py bootstrap_demo
echo "Airlock is serving on http://${HOST}:${PORT}/  (health: http://${HOST}:${PORT}/healthz)"
"$PY" -m daphne -b "$HOST" -p "$PORT" portal.asgi:application
