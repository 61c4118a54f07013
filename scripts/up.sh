#!/usr/bin/env bash
# `make up`: the stack in the foreground on fixed ports until Ctrl-C.
#   Redis  127.0.0.1:${REDIS_PORT:-6380} (private, in a temp dir; never the machine's 6379)
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

start() { # NAME BINARY ENV...
  local name=$1 bin=$2; shift 2
  env REDIS_URL="$REDIS_URL" ADMIN_TOKEN="$ADMIN_TOKEN" RUST_LOG="${RUST_LOG:-info}" "$@" \
    "target/$PROFILE/$bin" > >(sed -u "s/^/[$name] /") 2>&1 &
  STACK_PIDS+=($!) # the binary's pid, so stack_stop sends it SIGTERM for a graceful stop
}
start gw1 flashsale-api LISTEN_ADDR="127.0.0.1:${GW1_PORT:-8080}"
start gw2 flashsale-api LISTEN_ADDR="127.0.0.1:${GW2_PORT:-8081}"
start worker flashsale-worker METRICS_ADDR="127.0.0.1:${WORKER_METRICS_PORT:-9091}" CONSUMER_NAME=worker-1
wait_http "http://127.0.0.1:${GW1_PORT:-8080}/readyz"
wait_http "http://127.0.0.1:${GW2_PORT:-8081}/readyz"
cat <<MSG

flashsale is up (Ctrl-C stops everything):
  gateways        http://127.0.0.1:${GW1_PORT:-8080}  http://127.0.0.1:${GW2_PORT:-8081}
  worker metrics  http://127.0.0.1:${WORKER_METRICS_PORT:-9091}/metrics
  redis           $REDIS_URL
  ADMIN_TOKEN     $ADMIN_TOKEN

  curl -X PUT http://127.0.0.1:${GW1_PORT:-8080}/v1/events/drop -H "authorization: Bearer $ADMIN_TOKEN" \\
       -H 'content-type: application/json' -d '{"stock": 100}'
MSG
wait
