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
#   compose/docker-compose.cluster.yml
#                                the same two over the base file plus this override, and its
#                                wiring (every gateway and worker on the cluster, one volume
#                                and one fixed address per node, the init job's node list)
#   Dockerfile                   hadolint
#   compose/redis.conf           a real redis-server loads it (private port, temp dir), with
#                                AOF, noeviction and a maxmemory
#   compose/redis-cluster.conf   a real redis-server loads it; six nodes from it on loopback
#                                form a cluster with compose/redis-cluster-init.sh (run again:
#                                it only checks), which refuses a half-empty cluster
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

# The cluster variant: an override of the base file, so validated merged with it.
CLUSTER_COMPOSE=(-f compose/docker-compose.yml -f compose/docker-compose.cluster.yml)
run "compose: cluster compose-spec schema" \
  "$VENV/check-jsonschema" --builtin-schema vendor.compose-spec compose/docker-compose.cluster.yml
run "compose: cluster docker-compose config" \
  docker-compose "${CLUSTER_COMPOSE[@]}" --env-file "$TMP/compose.env" config -q
check_cluster_wiring() {
  # The merged configuration, as compose would run it (ruamel.yaml comes with check-jsonschema).
  docker-compose "${CLUSTER_COMPOSE[@]}" --env-file "$TMP/compose.env" config >"$TMP/cluster.yml"
  "$VENV/python" - "$TMP/cluster.yml" <<'EOF'
import ipaddress, sys
from ruamel.yaml import YAML
cfg = YAML(typ="safe").load(open(sys.argv[1]))
services = cfg["services"]
bad = []
def check(ok, what):
    if not ok:
        bad.append(what)
def command(s):
    c = s.get("command") or []
    return c if isinstance(c, list) else c.split()
net = cfg["networks"]["redis-cluster"]["ipam"]["config"][0]
subnet, dynamic = ipaddress.ip_network(net["subnet"]), ipaddress.ip_network(net["ip_range"])
nodes = {n: s for n, s in services.items() if "/usr/local/etc/redis/redis-cluster.conf" in command(s)}
check(len(nodes) == 6, f"{len(nodes)} cluster nodes, expected 6: {sorted(nodes)}")
check("redis" in nodes, "`redis` (which the base file's services depend on) is not a cluster node")
image = services["redis"]["image"]
check(":" in image and not image.endswith(":latest"), f"redis image {image} is not pinned")
addrs, volumes = {}, {}
for name, s in nodes.items():
    check(s["image"] == image, f"{name}: image {s['image']}, not {image}")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in s.get("volumes", [])}
    check(mounts.get("/usr/local/etc/redis/redis-cluster.conf", "").endswith("/compose/redis-cluster.conf"),
          f"{name}: compose/redis-cluster.conf not mounted")
    data = mounts.get("/data", "")
    check(data != "" and not data.startswith((".", "/")), f"{name}: /data is not a named volume")
    volumes.setdefault(data, []).append(name)
    addr = ipaddress.ip_address(s["networks"]["redis-cluster"]["ipv4_address"])
    check(addr in subnet and addr not in dynamic,
          f"{name}: {addr} is not a fixed address of {subnet} outside the dynamic {dynamic}")
    addrs[name] = addr
    check("healthcheck" in s, f"{name}: no healthcheck")
check(all(len(v) == 1 for v in volumes.values()), f"nodes share a volume: {volumes}")
check(len(set(addrs.values())) == len(addrs), f"nodes share an address: {addrs}")
init = services["redis-cluster-init"]
listed = init["environment"]["REDIS_CLUSTER_NODES"].split()
check(sorted(listed) == sorted(f"{a}:6379" for a in addrs.values()),
      f"REDIS_CLUSTER_NODES {listed} is not every node's address")
check({n: d.get("condition") for n, d in init.get("depends_on", {}).items()}
      == {n: "service_healthy" for n in nodes}, "redis-cluster-init does not wait for every node's healthcheck")
check(init.get("restart", "no") == "no", "redis-cluster-init restarts")
clients = {n: s for n, s in services.items() if command(s)[:1] in (["flashsale-api"], ["flashsale-worker"])}
check(len(clients) >= 4, f"gateways and workers: {sorted(clients)}")
for name, s in clients.items():
    seeds = s.get("environment", {}).get("REDIS_CLUSTER_URLS", "")
    hosts = {u.removeprefix("redis://").split(":")[0] for u in seeds.split(",") if u}
    check(hosts == set(nodes), f"{name}: REDIS_CLUSTER_URLS names {sorted(hosts)}, not the nodes")
    dep = s.get("depends_on", {}).get("redis-cluster-init", {})
    check(dep.get("condition") == "service_completed_successfully",
          f"{name}: does not wait for redis-cluster-init to complete successfully")
    check({"default", "redis-cluster"} <= set(s.get("networks", {})), f"{name}: not on both networks")
print("\n".join(bad) or f"{len(nodes)} nodes, {len(clients)} clients, {subnet}")
sys.exit(1 if bad else 0)
EOF
}
run "compose: cluster wiring" check_cluster_wiring

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

# --- redis-cluster.conf: loads, and six nodes from it form a cluster -----------------------
# The servers a check started (each check runs in its own subshell); its EXIT trap stops them.
NODE_PIDS=()
stop_nodes() {
  local pid
  for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
# cluster_ports N: N free loopback ports below 55536 whose cluster bus port (port + 10000) is
# free too, none of them another one's bus port.
cluster_ports() {
  python3 - "$1" <<'EOF'
import random, socket, sys
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
taken, ports = set(), []
while len(ports) < int(sys.argv[1]):
    p = random.randrange(20000, 45000)
    if {p, p + 10000} & taken or not (free(p) and free(p + 10000)):
        continue
    taken |= {p, p + 10000}
    ports.append(p)
print(" ".join(map(str, ports)))
EOF
}
# start_node DIR PORT: redis-server with compose/redis-cluster.conf, as a container runs it
# but on a loopback port, in DIR (its nodes.conf, AOF and log go there); waits for PING.
start_node() {
  local dir=$1 port=$2 conf=$PWD/compose/redis-cluster.conf pid
  mkdir -p "$dir"
  (cd "$dir" && exec redis-server "$conf" --port "$port" --bind 127.0.0.1 \
    --logfile "$dir/redis.log") &
  pid=$!
  NODE_PIDS+=("$pid")
  local deadline=$((SECONDS + 10))
  until redis-cli -p "$port" ping >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
      echo "node on port $port did not start:"; cat "$dir/redis.log" 2>/dev/null; return 1
    fi
    sleep 0.05
  done
}
check_redis_cluster_conf() {
  local port
  port=$(cluster_ports 1)
  trap stop_nodes EXIT
  start_node "$TMP/cluster-conf" "$port" || return 1
  local base_fsync setting want got bad=0
  # Every node persists as the single node does.
  base_fsync=$(sed -n 's/^appendfsync  *//p' compose/redis.conf)
  for setting in cluster-enabled=yes cluster-require-full-coverage=no appendonly=yes \
    "appendfsync=$base_fsync" maxmemory-policy=noeviction; do
    want=${setting#*=}
    got=$(redis-cli -p "$port" config get "${setting%%=*}" | tail -n 1)
    [[ $got == "$want" ]] || { echo "${setting%%=*} is $got, expected $want"; bad=1; }
  done
  got=$(redis-cli -p "$port" config get maxmemory | tail -n 1)
  ((got > 0)) || { echo "maxmemory is not set"; bad=1; }
  return "$bad"
}
run "redis-cluster.conf: loads in redis-server" check_redis_cluster_conf
# init_cluster NODE...: compose/redis-cluster-init.sh, the init service's own script (and its
# `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`), on loopback nodes.
init_cluster() {
  REDIS_CLUSTER_NODES="$*" REDIS_CLUSTER_WAIT_SECS=20 sh compose/redis-cluster-init.sh 2>&1
}
check_cluster_forms() {
  # Seven nodes: six for the cluster, one left empty for a node that lost its volume.
  local ports port nodes=() out
  read -ra ports <<<"$(cluster_ports 7)"
  trap stop_nodes EXIT
  for port in "${ports[@]}"; do
    start_node "$TMP/cluster/$port" "$port" || return 1
  done
  for port in "${ports[@]:0:6}"; do nodes+=("127.0.0.1:$port"); done
  out=$(init_cluster "${nodes[@]}") || { echo "first run failed:"; echo "$out"; return 1; }
  grep -q "creating the cluster of 6 nodes" <<<"$out" || { echo "first run did not create:"; echo "$out"; return 1; }
  # Three primaries with a third of the slots each, three replicas of distinct primaries.
  python3 - "$(redis-cli -p "${ports[0]}" cluster nodes)" <<'EOF' || return 1
import sys
rows = [l.split() for l in sys.argv[1].strip().splitlines()]
primaries = {r[0]: r for r in rows if "master" in r[2].split(",")}
replicas = [r for r in rows if "slave" in r[2].split(",")]
slots = {}
for pid, r in primaries.items():
    n = 0
    for part in r[8:]:
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    slots[pid] = n
ok = (len(primaries) == 3 and len(replicas) == 3 and sum(slots.values()) == 16384
      and all(n > 5000 for n in slots.values())
      and sorted(r[3] for r in replicas) == sorted(primaries)
      and all(r[7] == "connected" for r in rows))
if not ok:
    print("unexpected cluster layout:\n" + sys.argv[1])
    sys.exit(1)
EOF
  local state got
  for port in "${ports[@]:0:6}"; do
    state=$(redis-cli -p "$port" cluster info | tr -d '\r' | grep -E '^cluster_(state|slots_ok):' | tr '\n' ' ')
    [[ $state == "cluster_state:ok cluster_slots_ok:16384 " ]] || { echo "node $port: $state"; return 1; }
  done
  # An event's key written through one node is read through another (MOVED followed).
  redis-cli -c -p "${ports[0]}" set '{ev:check-ops}:probe' sold >/dev/null
  got=$(redis-cli -c -p "${ports[5]}" get '{ev:check-ops}:probe')
  [[ $got == sold ]] || { echo "read back '$got' through another node"; return 1; }
  # Idempotent: run again (the stack started again), it finds the cluster and only checks it.
  out=$(init_cluster "${nodes[@]}") || { echo "second run failed:"; echo "$out"; return 1; }
  grep -q "the cluster exists" <<<"$out" || { echo "second run did not skip:"; echo "$out"; return 1; }
  # An empty node (one that lost its volume) next to a formed cluster: refused, nothing joined.
  if out=$(init_cluster "${nodes[@]}" "127.0.0.1:${ports[6]}"); then
    echo "accepted a half-empty cluster:"; echo "$out"; return 1
  fi
  grep -q "1 of 7 nodes are empty" <<<"$out" || { echo "half-empty: $out"; return 1; }
  got=$(redis-cli -p "${ports[6]}" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')
  [[ $got == 1 ]] || { echo "the empty node was joined ($got known nodes)"; return 1; }
}
run "redis-cluster.conf: six nodes form a cluster" check_cluster_forms

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
