#!/usr/bin/env bash
# `make schemathesis`: fuzz a live gateway (private Redis and ledger, release build) against
# the OpenAPI document it serves, with the checks the project promises: no server errors, and every
# status code, content type and body as documented. Admin routes are exercised with the
# stack's token. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/schemathesis ]] || scripts/install-deps.sh ops
source scripts/stack.sh

stack_init
stack_redis
stack_postgres
stack_worker W1 BLOCK_MS=200
stack_gateway GW1
# A live event, so generated purchases also reach the reservation script, not only 404s.
stack_put_event fuzz '{"stock": 1000000, "per_user_limit": 5}' >/dev/null

.venv/bin/schemathesis run "$GW1_URL/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --header "Authorization: Bearer $ADMIN_TOKEN" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-200}" \
  --seed "${SCHEMATHESIS_SEED:-20261125}" \
  --workers 1 \
  --warnings off \
  --no-color
