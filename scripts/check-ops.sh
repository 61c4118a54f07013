#!/usr/bin/env bash
# Validates the operations kit with the tool each file is written for, then checks the
# dashboard against a live private stack (scripts/check-dashboard.py). Runs every check and
# exits non-zero if any failed.
#
#   scripts/check-ops.sh              # everything (builds the release binaries if needed)
#   SKIP_DASHBOARD=1 scripts/check-ops.sh   # static checks only, no build, no stack
#
# Checks:
#   compose/docker-compose.yml   compose-spec JSON schema; `docker-compose config -q` with
#                                compose/.env.example (secrets filled in with dummies)
#   Dockerfile                   hadolint
#   compose/redis.conf           a real redis-server loads it (private port, temp dir), with
#                                AOF, noeviction and a maxmemory
#   compose/nginx.conf           `nginx -t` when nginx is installed (check-dashboard.py
#                                also runs it in front of the gateways)
#   compose/prometheus.yml       promtool check config (also loads alerts.yml)
#   compose/alerts.yml           promtool check rules; promtool test rules alerts.test.yml
#   grafana/                     dashboard JSON parses, provisioning YAML is well-formed
#   .github/workflows/*.yml      GitHub workflow JSON schema
#   the dashboard                scripts/check-dashboard.py
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh ops

TMP=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-check-ops.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

VENV=.venv/bin
failed=()
started_all=$SECONDS

# run NAME CMD...: runs one check (in a subshell: a check that starts a process stops it
# with its own EXIT trap), prints its outcome and time, records a failure.
run() {
  local name=$1; shift
  local started=$SECONDS out
  if out=$("$@" 2>&1); then
    printf 'ok    %-44s %3ss\n' "$name" $((SECONDS - started))
  else
    printf 'FAIL  %-44s %3ss\n' "$name" $((SECONDS - started))
    printf '%s\n' "$out" | sed 's/^/      /'
    failed+=("$name")
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# --- compose -------------------------------------------------------------------------------
# The example env file leaves the secrets empty on purpose (compose refuses to start without
# them); validate with dummies filled in.
sed -e 's/^ADMIN_TOKEN=$/ADMIN_TOKEN=validation-only-0123456789abcdef/' \
  -e 's/^GRAFANA_ADMIN_PASSWORD=$/GRAFANA_ADMIN_PASSWORD=validation-only/' \
  -e 's/^POSTGRES_PASSWORD=$/POSTGRES_PASSWORD=validation0only/' \
  compose/.env.example >"$TMP/compose.env"
run "compose: compose-spec schema" \
  "$VENV/check-jsonschema" --builtin-schema vendor.compose-spec compose/docker-compose.yml
run "compose: docker-compose config" \
  docker-compose -f compose/docker-compose.yml --env-file "$TMP/compose.env" config -q
compose_requires_secrets() {
  # Without the secrets, compose must refuse (and say which variable is missing), each one
  # on its own: every secret but one filled in still fails, naming that one.
  local out secret
  if out=$(docker-compose -f compose/docker-compose.yml --env-file compose/.env.example config -q 2>&1); then
    echo "docker-compose accepted empty ADMIN_TOKEN/GRAFANA_ADMIN_PASSWORD/POSTGRES_PASSWORD"; return 1
  fi
  # docker-compose names the first missing one it meets.
  grep -Eq "ADMIN_TOKEN|GRAFANA_ADMIN_PASSWORD|POSTGRES_PASSWORD" <<<"$out" || { echo "$out"; return 1; }
  for secret in ADMIN_TOKEN GRAFANA_ADMIN_PASSWORD POSTGRES_PASSWORD; do
    sed "s/^$secret=.*/$secret=/" "$TMP/compose.env" >"$TMP/compose-without-$secret.env"
    if out=$(docker-compose -f compose/docker-compose.yml --env-file "$TMP/compose-without-$secret.env" config -q 2>&1); then
      echo "docker-compose accepted an empty $secret"; return 1
    fi
    grep -q "$secret" <<<"$out" || { echo "without $secret: $out"; return 1; }
    # Every use is required (`:?`): one `${X:-default}` would let the stack run on a default.
    if grep -En "\\$\{$secret(\}|[^:}]|:[^?])" compose/docker-compose.yml; then
      echo "$secret is used above without :? (a default or an empty value)"; return 1
    fi
  done
}
run "compose: refuses to start without secrets" compose_requires_secrets

# --- Dockerfile ----------------------------------------------------------------------------
run "Dockerfile: hadolint" "$VENV/hadolint" Dockerfile

# --- redis.conf: a real Redis 7 loads it ---------------------------------------------------
check_redis_conf() {
  local conf=$PWD/compose/redis.conf port pid
  port=$(free_port)
  mkdir -p "$TMP/redis"
  # The file's own settings; only the port, address and working directory (where the AOF
  # goes) differ from the container.
  (cd "$TMP/redis" && exec redis-server "$conf" --port "$port" --bind 127.0.0.1 \
    --logfile "$TMP/redis/redis.log") &
  pid=$!
  # shellcheck disable=SC2064 # expand now: the trap runs after the locals are gone
  trap "kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null" EXIT
  local deadline=$((SECONDS + 10))
  until redis-cli -p "$port" ping >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
      cat "$TMP/redis/redis.log" 2>/dev/null; return 1
    fi
    sleep 0.05
  done
  local setting want got bad=0
  for setting in appendonly=yes appendfsync=everysec maxmemory-policy=noeviction; do
    want=${setting#*=}
    got=$(redis-cli -p "$port" config get "${setting%%=*}" | tail -n 1)
    [[ $got == "$want" ]] || { echo "${setting%%=*} is $got, expected $want"; bad=1; }
  done
  # A ceiling: FlashsaleRedisMemoryHigh divides by it.
  got=$(redis-cli -p "$port" config get maxmemory | tail -n 1)
  [[ $got =~ ^[1-9][0-9]*$ ]] || { echo "maxmemory is ${got:-unset}, expected a ceiling above 0"; bad=1; }
  return "$bad"
}
run "redis.conf: loads in redis-server $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)" check_redis_conf

# --- nginx.conf ----------------------------------------------------------------------------
check_nginx_conf() {
  local nginx; nginx=$(command -v nginx || command -v /usr/sbin/nginx)
  mkdir -p "$TMP/nginx"
  # Compose host names do not resolve here; nginx < 1.27.3 lacks `resolve` in upstreams.
  sed -E -e 's/gateway-[0-9]+:8080/127.0.0.1:8080/' -e 's/ resolve / /' \
    -e "s|^http \{|http {\n    client_body_temp_path $TMP/nginx/b; proxy_temp_path $TMP/nginx/p; fastcgi_temp_path $TMP/nginx/f; uwsgi_temp_path $TMP/nginx/u; scgi_temp_path $TMP/nginx/s;|" \
    compose/nginx.conf >"$TMP/nginx/nginx.conf"
  "$nginx" -t -q -e stderr -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g "pid $TMP/nginx/nginx.pid;"
}
if command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; then
  run "nginx.conf: nginx -t" check_nginx_conf
else
  printf 'skip  %-44s (nginx not installed)\n' "nginx.conf: nginx -t"
fi

# --- Prometheus ----------------------------------------------------------------------------
# rule_files paths are relative to prometheus.yml, so alerts.yml resolves in place.
run "prometheus.yml: promtool check config" promtool check config compose/prometheus.yml
run "alerts.yml: promtool check rules" promtool check rules compose/alerts.yml
run "alerts.yml: promtool test rules" promtool test rules compose/alerts.test.yml
check_runbooks() {
  # Every alert has a runbook link whose file exists and has a heading with that anchor
  # (GitHub's anchor of "### FlashsaleGatewayDown" is #flashsalegatewaydown).
  python3 - <<'EOF'
import re, sys
from pathlib import Path
rules = Path("compose/alerts.yml").read_text()
alerts = re.findall(r"^\s*- alert: (\w+)", rules, re.M)
links = re.findall(r'^\s*runbook: "([^"#]+)#([^"]+)"', rules, re.M)
bad = []
if len(alerts) != len(links):
    bad.append(f"{len(alerts)} alerts but {len(links)} runbook annotations")
for path, anchor in links:
    doc = Path(path)
    if not doc.is_file():
        bad.append(f"runbook file {path} does not exist")
        continue
    headings = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", doc.read_text(), re.M)}
    if anchor not in headings:
        bad.append(f"no heading for #{anchor} in {path}")
print("\n".join(bad) or f"{len(links)} runbook links resolve")
sys.exit(1 if bad else 0)
EOF
}
run "alerts.yml: every runbook has a heading" check_runbooks

# --- Grafana -------------------------------------------------------------------------------
check_grafana_files() {
  python3 - <<'EOF'
import json, re, sys
from pathlib import Path
dash = json.loads(Path("grafana/dashboards/flashsale.json").read_text())
ids = [p["id"] for p in dash["panels"]]
assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
assert dash.get("uid") == "flashsale", "dashboard uid must stay 'flashsale' (links and bookmarks use it)"
for path in Path("grafana/provisioning").rglob("*.yml"):
    text = path.read_text()
    assert re.search(r"^apiVersion: 1$", text, re.M), f"{path}: apiVersion: 1 missing"
    assert "\t" not in text, f"{path}: tab in YAML"
print(f"{len(dash['panels'])} panels, provisioning ok")
EOF
}
run "grafana: dashboard JSON and provisioning" check_grafana_files
provisioning_schema_free_yaml() {
  # No YAML parser in the standard library: check-jsonschema parses YAML, so validate the
  # provisioning files against a schema that only requires an object with apiVersion.
  printf '{"type":"object","required":["apiVersion"]}' >"$TMP/any.json"
  "$VENV/check-jsonschema" --schemafile "$TMP/any.json" grafana/provisioning/*/*.yml
}
run "grafana: provisioning YAML parses" provisioning_schema_free_yaml

# --- GitHub workflows ----------------------------------------------------------------------
run "workflows: GitHub workflow schema" \
  "$VENV/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml

# --- dashboard against a live stack --------------------------------------------------------
if [[ -n ${SKIP_DASHBOARD:-} ]]; then
  printf 'skip  %-44s (SKIP_DASHBOARD set)\n' "dashboard: every panel returns data"
else
  run "build: cargo build --release --bins" cargo build --release --bins --quiet
  echo "      scripts/check-dashboard.py:"
  dashboard_started=$SECONDS
  if scripts/check-dashboard.py 2>&1 | sed 's/^/      /'; then
    printf 'ok    %-44s %3ss\n' "dashboard: every panel returns data" $((SECONDS - dashboard_started))
  else
    printf 'FAIL  %-44s %3ss\n' "dashboard: every panel returns data" $((SECONDS - dashboard_started))
    failed+=("dashboard: every panel returns data")
  fi
fi

echo
if ((${#failed[@]})); then
  echo "check-ops: ${#failed[@]} check(s) FAILED in $((SECONDS - started_all))s:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
echo "check-ops: all checks passed in $((SECONDS - started_all))s"
