#!/usr/bin/env bash
# `make up`: the stack in the foreground on fixed ports until Ctrl-C.
#   Redis  127.0.0.1:${REDIS_PORT:-6380} (private, in a temp dir; never the machine's 6379)
#   PostgreSQL (the ledger) 127.0.0.1:${POSTGRES_PORT:-5433} (private, in the same temp dir;
#     never the machine's 5432), database flashsale, trust auth on the loopback
#   gateways http://127.0.0.1:${GW1_PORT:-8080} and :${GW2_PORT:-8081}
#   worker metrics http://127.0.0.1:${WORKER_METRICS_PORT:-9091}
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/stack.sh
stack_init

port=${REDIS_PORT:-6380}
if redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "something already answers on port $port; set REDIS_PORT" >&2; exit 1
fi
REDIS_PORT=$port REDIS_URL="redis://127.0.0.1:$port"
redis-server --port "$port" --bind 127.0.0.1 --dir "$STACK_DIR" --appendonly yes --appendfsync everysec \
  --maxmemory-policy noeviction --logfile "$STACK_DIR/redis.log" &
STACK_PIDS+=($!)
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
export REDIS_PORT REDIS_URL

pg_port=${POSTGRES_PORT:-5433}
if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5)' "$pg_port" 2>/dev/null; then
  echo "something already answers on port $pg_port; set POSTGRES_PORT" >&2; exit 1
fi
stack_postgres "$pg_port"

start() { # NAME BINARY ENV...
  local name=$1 bin=$2; shift 2
  env REDIS_URL="$REDIS_URL" DATABASE_URL="$DATABASE_URL" ADMIN_TOKEN="$ADMIN_TOKEN" RUST_LOG="${RUST_LOG:-info}" "$@" \
    "target/$PROFILE/$bin" > >(sed -u "s/^/[$name] /") 2>&1 &
  STACK_PIDS+=($!) # the binary's pid, so stack_stop sends it SIGTERM for a graceful stop
}
# The worker first: a fresh Redis sells nothing until a worker has reconciled it with the
# ledger, so the gateways are ready (/readyz) only after that.
start worker flashsale-worker METRICS_ADDR="127.0.0.1:${WORKER_METRICS_PORT:-9091}" CONSUMER_NAME=worker-1
start gw1 flashsale-api LISTEN_ADDR="127.0.0.1:${GW1_PORT:-8080}"
start gw2 flashsale-api LISTEN_ADDR="127.0.0.1:${GW2_PORT:-8081}"
wait_http "http://127.0.0.1:${GW1_PORT:-8080}/readyz" 30
wait_http "http://127.0.0.1:${GW2_PORT:-8081}/readyz" 30
cat <<MSG

flashsale is up (Ctrl-C stops everything):
  gateways        http://127.0.0.1:${GW1_PORT:-8080}  http://127.0.0.1:${GW2_PORT:-8081}
  worker metrics  http://127.0.0.1:${WORKER_METRICS_PORT:-9091}/metrics
  redis           $REDIS_URL
  ledger          $DATABASE_URL   ($PG_BIN/psql $DATABASE_URL)
  ADMIN_TOKEN     $ADMIN_TOKEN

  curl -X PUT http://127.0.0.1:${GW1_PORT:-8080}/v1/events/drop -H "authorization: Bearer $ADMIN_TOKEN" \\
       -H 'content-type: application/json' -d '{"stock": 100}'
MSG
wait
