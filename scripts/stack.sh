# shellcheck shell=bash
# Functions to run a private flashsale stack from a script: a redis-server on a free port in
# a temporary directory, gateways and workers from target/$PROFILE, all stopped by
# stack_stop (installed as an EXIT trap by stack_init). Sourced by demo.sh, up.sh, the
# benchmark and the ops checks; never touches a Redis it did not start.
#
#   source scripts/stack.sh
#   stack_init                      # temp dir, EXIT trap; PROFILE=release|debug (default release)
#   stack_redis [extra redis args]  # sets REDIS_PORT, REDIS_URL
#   stack_gateway NAME [ENV=VAL...] # sets <NAME>_URL, e.g. GW1_URL=http://127.0.0.1:PORT
#   stack_worker NAME [ENV=VAL...]  # sets <NAME>_METRICS=http://127.0.0.1:PORT
#   stack_put_event ID JSON         # PUT with the stack's admin token
#   stack_stop

STACK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROFILE=${PROFILE:-release}
STACK_PIDS=()

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_http() { # URL [seconds]
  local url=$1 deadline=$((SECONDS + ${2:-20}))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "timed out waiting for $url" >&2; return 1; fi
    sleep 0.05
  done
}

stack_init() {
  STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-stack.XXXXXX")
  ADMIN_TOKEN=${ADMIN_TOKEN:-$(python3 -c 'import secrets; print(secrets.token_hex(16))')}
  export ADMIN_TOKEN
  trap stack_stop EXIT
  trap 'exit 130' INT TERM
}

stack_stop() {
  local pid
  for pid in "${STACK_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${STACK_PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  STACK_PIDS=()
  if [[ -n ${REDIS_PORT:-} ]]; then redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true; fi
  [[ -n ${STACK_DIR:-} && -d $STACK_DIR ]] && rm -rf "$STACK_DIR"
  return 0
}

stack_redis() {
  REDIS_PORT=$(free_port)
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$STACK_DIR" --logfile "$STACK_DIR/redis.log" "$@" &
  STACK_PIDS+=($!)
  local deadline=$((SECONDS + 10))
  until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then echo "redis-server did not start" >&2; return 1; fi
    sleep 0.05
  done
  export REDIS_URL REDIS_PORT
}

stack_gateway() { # NAME [ENV=VAL...]
  local name=$1; shift
  local port; port=$(free_port)
  env REDIS_URL="$REDIS_URL" LISTEN_ADDR="127.0.0.1:$port" ADMIN_TOKEN="$ADMIN_TOKEN" \
    RUST_LOG="${RUST_LOG:-warn}" "$@" "$STACK_ROOT/target/$PROFILE/flashsale-api" \
    >>"$STACK_DIR/$name.log" 2>&1 &
  STACK_PIDS+=($!)
  printf -v "${name}_URL" 'http://127.0.0.1:%s' "$port"
  printf -v "${name}_PID" '%s' "$!"
  export "${name}_URL" "${name}_PID"
  wait_http "http://127.0.0.1:$port/healthz"
}

stack_worker() { # NAME [ENV=VAL...]
  local name=$1; shift
  local port; port=$(free_port)
  env REDIS_URL="$REDIS_URL" METRICS_ADDR="127.0.0.1:$port" CONSUMER_NAME="$name" \
    RUST_LOG="${RUST_LOG:-warn}" "$@" "$STACK_ROOT/target/$PROFILE/flashsale-worker" \
    >>"$STACK_DIR/$name.log" 2>&1 &
  STACK_PIDS+=($!)
  printf -v "${name}_METRICS" 'http://127.0.0.1:%s' "$port"
  printf -v "${name}_PID" '%s' "$!"
  export "${name}_METRICS" "${name}_PID"
  wait_http "http://127.0.0.1:$port/healthz"
}

stack_put_event() { # ID JSON [GATEWAY_URL]
  curl -fsS -X PUT "${3:-$GW1_URL}/v1/events/$1" -H "authorization: Bearer $ADMIN_TOKEN" \
    -H 'content-type: application/json' -d "$2"
}
