#!/usr/bin/env bash
# `make schemathesis`: fuzz a live gateway (private Redis and ledger, release build) against
# the OpenAPI document it serves, with the checks the project promises: no server errors, and every
# status code, content type and body as documented. The gateway takes buyer tokens
# (BUYER_JWT_SECRET): buyer routes are exercised with a valid token minted by
# `flashsale-api token`, admin routes with the stack's admin token, each by its security
# scheme in the document. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/schemathesis ]] || scripts/install-deps.sh ops
source scripts/stack.sh

stack_init
stack_redis
stack_postgres
BUYER_JWT_SECRET=${BUYER_JWT_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}
export BUYER_JWT_SECRET
stack_worker W1 BLOCK_MS=200
stack_gateway GW1
# A live event, so generated purchases also reach the reservation script, not only 404s.
stack_put_event fuzz '{"stock": 1000000, "per_user_limit": 5}' >/dev/null

# Each security scheme of the document gets its own credentials.
BUYER_TOKEN=$(target/release/flashsale-api token --sub fuzz-buyer --ttl 1h)
cat >"$STACK_DIR/schemathesis.toml" <<EOF
[auth.openapi.admin_token]
bearer = "$ADMIN_TOKEN"

[auth.openapi.buyer_token]
bearer = "$BUYER_TOKEN"
EOF

.venv/bin/schemathesis --config-file "$STACK_DIR/schemathesis.toml" run "$GW1_URL/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-200}" \
  --seed "${SCHEMATHESIS_SEED:-20261125}" \
  --workers 1 \
  --warnings off \
  --no-color
