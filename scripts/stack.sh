# shellcheck shell=bash
# Functions to run a private flashsale stack from a script: a redis-server and a PostgreSQL
# server (the ledger) on free ports in a temporary directory, gateways and workers from
# target/$PROFILE, all stopped by stack_stop (installed as an EXIT trap by stack_init).
# Sourced by demo.sh, up.sh, k6-smoke.sh, schemathesis.sh and bench/run.sh; never touches a
# Redis or PostgreSQL it did not start (not the machine's 6379 or 5432).
#
#   source scripts/stack.sh
#   stack_init                      # temp dir, EXIT trap; PROFILE=release|debug (default release)
#   stack_redis [extra redis args]  # sets REDIS_PORT, REDIS_URL
#   stack_postgres [PORT]           # sets POSTGRES_PORT, DATABASE_URL (database flashsale)
#   stack_worker NAME [ENV=VAL...]  # sets <NAME>_METRICS=http://127.0.0.1:PORT (needs the ledger)
#   stack_gateway NAME [ENV=VAL...] # sets <NAME>_URL, e.g. GW1_URL=http://127.0.0.1:PORT
#   stack_psql SQL                  # runs SQL in the ledger, prints rows as `a|b` lines
#   stack_put_event ID JSON         # PUT with the stack's admin token
#   stack_stop
#
# A fresh Redis sells nothing until a worker has reconciled it with the ledger (the sales
# fence: only a worker loads the purchase script). So once a worker runs, every gateway is
# waited for until its /readyz says ready: after the last stack_gateway or stack_worker call,
# in either order, the stack sells.

STACK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROFILE=${PROFILE:-release}
STACK_PIDS=()
STACK_GATEWAYS=() # their base URLs, for the readiness wait
STACK_WORKERS=0

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
  STACK_PIDS=() STACK_GATEWAYS=() STACK_WORKERS=0
  if [[ -n ${REDIS_PORT:-} ]]; then redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true; fi
  # PostgreSQL last, once its clients are gone. SIGINT is its fast shutdown; a SIGKILLed
  # postmaster would leave its server processes behind, so SIGQUIT (immediate) comes first.
  if [[ -n ${STACK_PG_PID:-} ]]; then
    kill -INT "$STACK_PG_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$STACK_PG_PID" 2>/dev/null || break; sleep 0.1; done
    kill -QUIT "$STACK_PG_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$STACK_PG_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$STACK_PG_PID" 2>/dev/null || true
    STACK_PG_PID=
  fi
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

# postgres_bin_dir: where initdb, postgres and psql are (testkit/src/postgres.rs looks in the
# same places: `pg_config --bindir`, the newest /usr/lib/postgresql/N/bin, PATH).
postgres_bin_dir() {
  local dir
  dir=$(pg_config --bindir 2>/dev/null) && [[ -x $dir/initdb && -x $dir/postgres && -x $dir/psql ]] &&
    { echo "$dir"; return; }
  for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k4 -n -r); do
    [[ -x $dir/initdb && -x $dir/postgres && -x $dir/psql ]] && { echo "$dir"; return; }
  done
  dir=$(dirname "$(command -v initdb 2>/dev/null)" 2>/dev/null) && [[ -x $dir/postgres ]] &&
    { echo "$dir"; return; }
  echo "PostgreSQL's initdb/postgres/psql not found: run scripts/install-deps.sh" >&2
  return 1
}

stack_postgres() { # [PORT]: a private PostgreSQL in $STACK_DIR/pg, trust auth on 127.0.0.1 only
  PG_BIN=$(postgres_bin_dir)
  local dir=$STACK_DIR/pg as=()
  mkdir -p "$dir"
  # PostgreSQL refuses to run as root: then the server runs as the `postgres` user (Debian's
  # package creates it), which must be able to reach and own its directory. setpriv execs
  # (runuser would fork), so $! is the postmaster itself.
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || { echo "no postgres user to run PostgreSQL as" >&2; return 1; }
    chmod 711 "$STACK_DIR"
    chown postgres:postgres "$dir"
    as=(setpriv --reuid=postgres --regid=postgres --init-groups)
  fi
  (cd "$dir" && "${as[@]}" "$PG_BIN/initdb" -D "$dir/data" --username=postgres --auth=trust \
    --encoding=UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1) ||
    { cat "$dir/initdb.log" >&2; return 1; }
  POSTGRES_PORT=${1:-$(free_port)}
  # Durability is not the point of these stacks: fsync off, as in testkit.
  (cd "$dir" && exec "${as[@]}" "$PG_BIN/postgres" -D "$dir/data" -p "$POSTGRES_PORT" \
    -c listen_addresses=127.0.0.1 -c unix_socket_directories="$dir" -c fsync=off \
    -c full_page_writes=off -c dynamic_shared_memory_type=mmap >>"$dir/postgres.log" 2>&1) &
  STACK_PG_PID=$!
  local deadline=$((SECONDS + 30))
  until "$PG_BIN/psql" -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; do
    if ! kill -0 "$STACK_PG_PID" 2>/dev/null || ((SECONDS > deadline)); then
      echo "postgres did not start on port $POSTGRES_PORT:" >&2; tail -n 20 "$dir/postgres.log" >&2; return 1
    fi
    sleep 0.05
  done
  "$PG_BIN/psql" -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres -Atqc 'create database flashsale' >/dev/null
  DATABASE_URL="postgres://postgres@127.0.0.1:$POSTGRES_PORT/flashsale"
  export DATABASE_URL POSTGRES_PORT PG_BIN
}

stack_psql() { # SQL: rows unaligned, columns separated by |
  "$PG_BIN/psql" -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d flashsale -X -At -v ON_ERROR_STOP=1 -c "$1"
}

# stack_wait_ready: with a worker running, every gateway answers /readyz (the fence is lifted).
stack_wait_ready() {
  ((STACK_WORKERS)) || return 0
  local url
  for url in "${STACK_GATEWAYS[@]}"; do wait_http "$url/readyz" 30; done
}

stack_gateway() { # NAME [ENV=VAL...]
  local name=$1; shift
  local port; port=$(free_port)
  # DATABASE_URL is optional for a gateway (it reads events that left Redis from the ledger).
  env REDIS_URL="$REDIS_URL" ${DATABASE_URL:+DATABASE_URL="$DATABASE_URL"} LISTEN_ADDR="127.0.0.1:$port" \
    ADMIN_TOKEN="$ADMIN_TOKEN" RUST_LOG="${RUST_LOG:-warn}" "$@" "$STACK_ROOT/target/$PROFILE/flashsale-api" \
    >>"$STACK_DIR/$name.log" 2>&1 &
  STACK_PIDS+=($!)
  printf -v "${name}_URL" 'http://127.0.0.1:%s' "$port"
  printf -v "${name}_PID" '%s' "$!"
  export "${name}_URL" "${name}_PID"
  STACK_GATEWAYS+=("http://127.0.0.1:$port")
  wait_http "http://127.0.0.1:$port/healthz"
  stack_wait_ready
}

stack_worker() { # NAME [ENV=VAL...]
  local name=$1; shift
  [[ -n ${DATABASE_URL:-} ]] || { echo "stack_worker: the worker needs the ledger: call stack_postgres first" >&2; return 1; }
  local port; port=$(free_port)
  env REDIS_URL="$REDIS_URL" DATABASE_URL="$DATABASE_URL" METRICS_ADDR="127.0.0.1:$port" CONSUMER_NAME="$name" \
    RUST_LOG="${RUST_LOG:-warn}" "$@" "$STACK_ROOT/target/$PROFILE/flashsale-worker" \
    >>"$STACK_DIR/$name.log" 2>&1 &
  STACK_PIDS+=($!)
  STACK_WORKERS=$((STACK_WORKERS + 1))
  printf -v "${name}_METRICS" 'http://127.0.0.1:%s' "$port"
  printf -v "${name}_PID" '%s' "$!"
  export "${name}_METRICS" "${name}_PID"
  wait_http "http://127.0.0.1:$port/healthz"
  stack_wait_ready
}

stack_put_event() { # ID JSON [GATEWAY_URL]
  curl -fsS -X PUT "${3:-$GW1_URL}/v1/events/$1" -H "authorization: Bearer $ADMIN_TOKEN" \
    -H 'content-type: application/json' -d "$2"
}
