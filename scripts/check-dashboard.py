#!/usr/bin/env python3
"""Checks that every panel of grafana/dashboards/flashsale.json shows data from a real system.

Grafana cannot run here, so this script does what Grafana would: it starts a private stack
(redis-server with a maxmemory and the AOF on, PostgreSQL for the ledger, two workers and two
gateways from target/$PROFILE, redis-exporter and postgres-exporter, nginx with
compose/nginx.conf in front of the gateways when an nginx binary is available, and a real
Prometheus scraping them every second with compose/alerts.yml loaded, under the job names of
compose/prometheus.yml), drives a short sale through it (accepted orders, sold-outs, replays,
a per-user limit, a sale not yet open, invalid requests, then event reads and order polls),
waits until Prometheus has scraped the result, then runs every panel query with the dashboard
variables substituted against Prometheus's /api/v1/query: the job variables by the stack's job
names, $event by the sale's event.

It fails (exit 1) when a panel query returns an empty result or an error, when a variable's
query does not list what the stack has (the $event variable the sale's event, each job
variable its job), when a panel or variable does not take its data source from $datasource,
when a query selects a job by name rather than through a job variable, or when an alert rule
fails to evaluate, reads a series the stack does not have, or fires during a healthy sale.
Every process it starts is stopped on exit, Ctrl-C included.

Usage: scripts/check-dashboard.py [--profile release|debug] [--rate-interval 30s]
Needs: redis-server, PostgreSQL, prometheus, prometheus-redis-exporter,
prometheus-postgres-exporter (scripts/install-deps.sh ops), built binaries
(cargo build --release --bins); nginx optional. Standard library only; the private stack
comes from scripts/private_stack.py (shared with bench/bench.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid

import private_stack
from private_stack import ROOT, Stack, StackError, free_port, http, wait_until
DASHBOARD = ROOT / "grafana/dashboards/flashsale.json"
DATASOURCE = ROOT / "grafana/provisioning/datasources/prometheus.yml"
ALERTS = ROOT / "compose/alerts.yml"
NGINX_CONF = ROOT / "compose/nginx.conf"

STOCK = 40
BUYERS = 60  # distinct buyers: STOCK of them get an order, the rest a sold-out 409

# The read paths: GET of an event and of an order (route templates as the gateway labels them).
READ_ROUTES = "/v1/events/[{]event_id[}](/orders/[{]order_id[}])?"

# The dashboard's job variables and the private stack's scrape jobs: the job names of
# compose/prometheus.yml, which compose/alerts.yml selects on.
JOBS = {"gateway_job": "gateway", "worker_job": "worker", "redis_job": "redis", "postgres_job": "postgres"}


class CheckFailed(StackError):
    pass


def log(message: str) -> None:
    print(f"check-dashboard: {message}", flush=True)


class DashboardStack(Stack):
    """The private stack, plus what only this check runs: nginx and Prometheus."""

    # Workers refresh their gauges and find events quickly, so the check takes seconds.
    WORKER_ENV = {"STATS_INTERVAL_MS": "250", "DISCOVERY_INTERVAL_MS": "250", "TRIM_INTERVAL_MS": "1000"}

    def nginx(self, gateway_ports: list[int]) -> str | None:
        """compose/nginx.conf in front of the gateways, or None when nginx is not installed."""
        binary = os.environ.get("NGINX") or shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if not binary:
            return None
        version_out = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr
        match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version_out)
        version = tuple(int(x) for x in match.groups()) if match else (0, 0, 0)
        port = free_port()
        prefix = self.dir / "nginx"
        prefix.mkdir()
        conf = NGINX_CONF.read_text()
        # The compose names and port become this stack's; nothing else changes.
        for i, gw_port in enumerate(gateway_ports, start=1):
            conf, n = re.subn(rf"\bgateway-{i}:8080\b", f"127.0.0.1:{gw_port}", conf)
            if n != 1:
                raise CheckFailed(f"compose/nginx.conf: expected one 'server gateway-{i}:8080' line")
        conf, n = re.subn(r"^(\s*)listen 8080;", rf"\1listen 127.0.0.1:{port};", conf, flags=re.M)
        if n != 1:
            raise CheckFailed("compose/nginx.conf: expected one 'listen 8080;'")
        if version < (1, 27, 3):  # `resolve` in upstream servers needs nginx >= 1.27.3
            conf = re.sub(r"(server 127\.0\.0\.1:\d+) resolve", r"\1", conf)
        # Temp paths inside the prefix, so nginx runs without root.
        temp = "".join(
            f"    {kind}_temp_path {prefix}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = conf.replace("http {\n", "http {\n" + temp, 1)
        (prefix / "nginx.conf").write_text(conf)
        argv = [
            binary,
            "-e",
            "stderr",
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-g",
            f"daemon off; pid {prefix}/nginx.pid;",
        ]
        test = subprocess.run(argv + ["-t"], capture_output=True, text=True)
        if test.returncode != 0:
            raise CheckFailed(f"nginx -t rejected compose/nginx.conf:\n{test.stderr}")
        proc = self.start("nginx", argv)
        url = f"http://127.0.0.1:{port}"
        self.wait_http("nginx", proc, f"{url}/lb/healthz")
        log(f"nginx {'.'.join(map(str, version))} with compose/nginx.conf at {url}")
        return url

    def prometheus(self, targets: dict[str, list[int]]) -> str:
        """Prometheus scraping `targets` ({job name: ports on 127.0.0.1}) every second."""
        port = free_port()
        # JSON is YAML: no YAML library needed.
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}
                for job, ports in targets.items()
            ],
        }
        config_path = self.dir / "prometheus.yml"
        config_path.write_text(json.dumps(config, indent=2))
        proc = self.start(
            "prometheus",
            [
                "prometheus",
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
        )
        url = f"http://127.0.0.1:{port}"
        self.wait_http("prometheus", proc, f"{url}/-/ready", timeout=30)
        return url


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def api(self, path: str, **params):
        query = urllib.parse.urlencode(params, doseq=True)
        status, _, body = http("GET", f"{self.url}{path}?{query}", timeout=10)
        if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            raise CheckFailed(f"Prometheus {path} {params}: HTTP {status}: {body}")
        return body["data"]

    def query(self, expr: str) -> list:
        return self.api("/api/v1/query", query=expr)["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def drive_sale(admin: str, buy_urls: list[str], token: str, event: str) -> tuple[dict, list[str]]:
    """A short sale with every purchase outcome but `error`; returns what the buyers saw and
    the ids of the accepted orders."""
    auth = {"authorization": f"Bearer {token}"}
    status, _, body = http(
        "PUT",
        f"{admin}/v1/events/{event}",
        {"stock": STOCK, "per_user_limit": 2, "name": "dashboard check"},
        auth,
    )
    if status != 201:
        raise CheckFailed(f"PUT event: {status} {body}")
    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, _, body = http("PUT", f"{admin}/v1/events/{event}-later", {"stock": 5, "starts_at": later}, auth)
    if status != 201:
        raise CheckFailed(f"PUT upcoming event: {status} {body}")

    def buy(i: int, user: str, quantity: int = 1, key: str | None = None, ev: str = event):
        url = buy_urls[i % len(buy_urls)]
        headers = {"idempotency-key": key} if key else {}
        status, headers, body = http(
            "POST", f"{url}/v1/events/{ev}/purchases", {"user_id": user, "quantity": quantity}, headers
        )
        return status, headers, body

    seen: dict[str, int] = {}

    def expect(result, want: int, what: str):
        status, _, body = result
        seen[what] = seen.get(what, 0) + 1
        if status != want:
            raise CheckFailed(f"{what}: expected {want}, got {status} {body}")
        return body

    # A buyer takes their whole allowance, then asks for more: limit_exceeded.
    greedy = expect(buy(0, "greedy", 2, "greedy-1"), 202, "accepted")["order_id"]
    expect(buy(1, "greedy", 1, "greedy-2"), 409, "limit_exceeded")
    # Invalid requests and unknown events count as `rejected`.
    expect(buy(0, "bad user!"), 422, "rejected")
    expect(buy(1, "someone", ev=f"{event}-missing"), 404, "rejected")
    expect(buy(0, "greedy", 1, "greedy-1"), 422, "rejected")  # same key, different payload
    expect(buy(1, "early", ev=f"{event}-later"), 409, "sale_not_active")

    # The rush: BUYERS distinct buyers for the STOCK - 2 units left, spread over every URL.
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: (i, buy(i, f"buyer-{i}", 1, f"key-{i}")), range(BUYERS)))
    orders = {}
    for i, (status, _, body) in results:
        if status == 202:
            orders[i] = body["order_id"]
        elif status != 409 or body.get("code") != "sold_out":
            raise CheckFailed(f"buyer-{i}: unexpected {status} {body}")
    if len(orders) != STOCK - 2:
        raise CheckFailed(f"{len(orders)} buyers got an order, expected {STOCK - 2}")
    seen["accepted"] += len(orders)
    seen["sold_out"] = BUYERS - len(orders)

    # Retries of accepted purchases after the sell-out: replays of the same order.
    for i in list(orders)[:10]:
        status, headers, body = buy(i + 1, f"buyer-{i}", 1, f"key-{i}")
        if status != 200 or headers.get("idempotent-replayed") != "true" or body["order_id"] != orders[i]:
            raise CheckFailed(f"replay of buyer-{i}: {status} {dict(headers)} {body}")
        seen["replayed"] = seen.get("replayed", 0) + 1
    return seen, [greedy, *orders.values()]


def read_back(prom: Prometheus, gateway_urls: list[str], buy_urls: list[str], event: str, orders: list[str]) -> dict:
    """What buyers do after a sale: poll their orders (every one confirmed by now) and read the
    event, and poll an order that does not exist (404, after the gateway looked in Redis and the
    ledger). First one read of each kind on every gateway, until Prometheus has scraped the new
    series, so that the rest shows up as rates and latencies rather than as counters that were
    already final at their first sample. Returns the requests made, by kind."""
    made = {"order": 0, "unknown order": 0, "event": 0}

    def read(url: str, kind: str, order_id: str | None = None):
        path = f"/v1/events/{event}" + (f"/orders/{order_id}" if order_id else "")
        status, _, body = http("GET", f"{url}{path}")
        want = 404 if kind == "unknown order" else 200
        if status != want or (kind == "order" and body.get("status") != "confirmed") or (
            kind == "event" and body.get("confirmed") != STOCK
        ):
            raise CheckFailed(f"GET {path} through {url}: {status} {body}")
        made[kind] += 1

    def reads_scraped() -> float | None:
        return prom.scalar(f'sum(flashsale_http_requests_total{{method="GET", route=~"{READ_ROUTES}"}})')

    for url in gateway_urls:
        read(url, "order", orders[0])
        read(url, "unknown order", str(uuid.uuid4()))
        read(url, "event")
    wait_until(
        "Prometheus to scrape the first event and order reads of every gateway",
        lambda: prom.scalar(f'count(flashsale_http_requests_total{{method="GET", route=~"{READ_ROUTES}"}})')
        == 3 * len(gateway_urls),
        30,
        interval=0.25,
    )
    before = reads_scraped()
    for i, order_id in enumerate(orders):
        read(buy_urls[i % len(buy_urls)], "order", order_id)
    for url in buy_urls:
        read(url, "unknown order", str(uuid.uuid4()))
        read(url, "event")
    rest = sum(made.values()) - 3 * len(gateway_urls)
    wait_until(
        "Prometheus to scrape the rest of the reads",
        lambda: (reads_scraped() or 0) >= before + rest,
        30,
        interval=0.25,
    )
    return made


def panels(dashboard: dict):
    """Every panel that queries data, the panels nested in collapsed rows included."""

    def walk(items):
        for panel in items:
            if panel.get("type") == "row":
                yield from walk(panel.get("panels", []))
            else:
                yield panel

    yield from walk(dashboard.get("panels", []))


def substitute(expr: str, variables: dict[str, str]) -> str:
    def value(match):
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise CheckFailed(f"unknown dashboard variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def regex_escape(value: str) -> str:
    """What Grafana does to a variable value used inside =~ (RE2 metacharacters escaped)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value)


def check_dashboard(prom: Prometheus, event: str, rate_interval: str) -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    uid_match = re.search(r"^\s*uid:\s*(\S+)\s*$", DATASOURCE.read_text(), re.M)
    if not uid_match:
        raise CheckFailed(f"no uid in {DATASOURCE.relative_to(ROOT)}")
    datasource_uid = uid_match.group(1).strip("'\"")
    failures = []
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}

    # $datasource: every panel, target and query variable takes its data source from it, and
    # it opens on the provisioned one. (Its value does not matter here: there is one Prometheus.)
    source = variables.get("datasource")
    if not source or source.get("type") != "datasource" or source.get("query") != "prometheus":
        failures.append("dashboard has no $datasource variable of type datasource for prometheus")
    elif (source.get("current") or {}).get("value") != datasource_uid:
        failures.append(f"$datasource: default is not the provisioned data source {datasource_uid!r}")
    for name, variable in variables.items():
        if variable.get("type") == "query" and (variable.get("datasource") or {}).get("uid") != "${datasource}":
            failures.append(f"${name}: variable data source is not ${{datasource}}")

    substitutions = {
        **JOBS,
        "datasource": datasource_uid,
        "event": regex_escape(event),
        "__rate_interval": rate_interval,
        "__interval": "5s",
        "__interval_ms": "5000",
        "__range": "5m",
        "__range_s": "300",
        "__range_ms": "300000",
    }
    # Each job variable lists the jobs Prometheus scrapes and defaults to compose's job name,
    # which is the stack's; $event (scoped by $worker_job) lists the sale's event.
    for name, job in JOBS.items():
        if name not in variables:
            failures.append(f"dashboard has no ${name} variable")
            continue
        default = (variables[name].get("current") or {}).get("value")
        if default != job:
            failures.append(f"${name}: default {default!r}, expected {job!r} (compose/prometheus.yml)")
        failures += check_variable(prom, name, variables[name], job, substitutions)
    if "event" not in variables:
        failures.append("dashboard has no $event template variable")
    else:
        failures += check_variable(prom, "event", variables["event"], event, substitutions)

    for panel in panels(dashboard):
        title = panel.get("title") or f"panel {panel.get('id')}"
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            failures.append(f"{title}: panel data source uid is not ${{datasource}}")
        if not panel.get("targets"):
            failures.append(f"{title}: no query")
        for target in panel.get("targets", []):
            ref = target.get("refId", "?")
            if (target.get("datasource") or {}).get("uid") != "${datasource}":
                failures.append(f"{title} [{ref}]: target data source uid is not ${{datasource}}")
            # A job named in the query would not follow the job variables to another setup.
            hard_coded = re.findall(r'\bjob\s*(?:=|!=|=~|!~)\s*"(?!\$)[^"]*"', target.get("expr", ""))
            if hard_coded:
                failures.append(f"{title} [{ref}]: job selected by name ({', '.join(hard_coded)}), not by a job variable")
            try:
                query = substitute(target.get("expr", ""), substitutions)
                result = prom.query(query)
            except CheckFailed as error:
                failures.append(f"{title} [{ref}]: {error}")
                log(f"FAIL {title} [{ref}]: {error}")
                continue
            if not result:
                failures.append(f"{title} [{ref}]: no data for {query}")
                log(f"FAIL {title} [{ref}]: empty result: {query}")
                continue
            # NaN (e.g. a quantile of a histogram without observations) draws nothing.
            if all(r["value"][1].lower() == "nan" for r in result):
                failures.append(f"{title} [{ref}]: only NaN for {query}")
                log(f"FAIL {title} [{ref}]: only NaN: {query}")
                continue
            sample = ", ".join(
                f"{'/'.join(v for k, v in sorted(r['metric'].items()) if k != '__name__') or '-'}"
                f"={float(r['value'][1]):.4g}"
                for r in result[:4]
            )
            more = f" (+{len(result) - 4} more)" if len(result) > 4 else ""
            log(f"ok   {title} [{ref}]: {len(result)} series: {sample}{more}")
    return failures


def check_variable(prom: Prometheus, name: str, variable: dict, want: str, substitutions: dict) -> list[str]:
    """A label_values(metric{selector}, label) variable, its selector's variables substituted,
    must offer `want`."""
    definition = variable.get("definition", "")
    match = re.fullmatch(r"label_values\((\w+(?:\{[^}]*\})?),\s*(\w+)\)", definition)
    if not match:
        return [f"${name}: unexpected definition {definition!r}"]
    try:
        selector = substitute(match.group(1), substitutions)
    except CheckFailed as error:
        return [f"${name}: {error}"]
    values = prom.api(f"/api/v1/label/{match.group(2)}/values", **{"match[]": selector})
    status = "ok" if want in values else "FAIL"
    log(f"{status:4} variable ${name} = {definition} -> {values}")
    return [] if want in values else [f"${name}: {definition} does not list {want}"]


def check_rules(prom: Prometheus) -> list[str]:
    """Every alert rule evaluates without error, every series it reads exists (a misspelt
    exporter metric would leave its alert silent for good), and none is pending or firing."""

    def evaluated():
        groups = prom.api("/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = rules and all(not r.get("lastEvaluation", "").startswith("0001") for r in rules)
        return rules if done else None

    rules = wait_until("every alert rule to be evaluated", evaluated, 20, interval=0.5)
    failures = []
    for rule in rules:
        if rule.get("health") != "ok":
            failures.append(f"alert {rule['name']}: health {rule.get('health')}: {rule.get('lastError')}")
        elif rule.get("state") not in (None, "inactive"):
            failures.append(f"alert {rule['name']} is {rule['state']} during a healthy sale")
    # Series selectors (`name{` or `name[`); recorded series (level:metric:operations) are the
    # rules' own output.
    read = sorted({n for r in rules for n in re.findall(r"\b([a-zA-Z_]\w*)\s*[{\[]", r["query"])})
    missing = [n for n in read if not prom.query(f"count({n})")]
    failures += [f"alert rules read {n}, which the stack does not have" for n in missing]
    status = "ok" if not failures else "FAIL"
    log(
        f"{status:4} {len(rules)} rules of {ALERTS.relative_to(ROOT)} evaluate cleanly, none fires;"
        f" {len(read) - len(missing)} of the {len(read)} series they read exist"
        + (f" (missing: {', '.join(missing)})" if missing else "")
    )
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile", default=os.environ.get("PROFILE", "release"), choices=["release", "debug"]
    )
    parser.add_argument("--rate-interval", default="30s", help="value of $__rate_interval (default 30s)")
    args = parser.parse_args()

    for tool in ("redis-server", "prometheus"):
        if not shutil.which(tool):
            log(f"{tool} not found; run scripts/install-deps.sh ops")
            return 2
    try:
        private_stack.postgres_bin_dir()
        private_stack.exporter_binary("prometheus-redis-exporter", "redis_exporter")
        private_stack.exporter_binary("prometheus-postgres-exporter", "postgres_exporter")
    except StackError as error:
        log(str(error))
        return 2
    for binary in ("flashsale-api", "flashsale-worker"):
        if not (ROOT / "target" / args.profile / binary).exists():
            log(
                f"target/{args.profile}/{binary} not found; run cargo build --{args.profile} --bins"
                if args.profile == "release"
                else f"target/debug/{binary} not found; run cargo build --bins"
            )
            return 2

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    stack = DashboardStack(args.profile, prefix="flashsale-dashboard.")
    started = time.monotonic()
    try:
        # As compose/redis.conf has it: a ceiling (the memory panels and FlashsaleRedisMemoryHigh
        # divide by it), noeviction, the AOF on.
        redis_port = stack.redis("--maxmemory", "1gb", "--maxmemory-policy", "noeviction", "--appendonly", "yes")
        redis_url = f"redis://127.0.0.1:{redis_port}"
        database_url = stack.postgres()
        exporters = {"redis": [stack.redis_exporter(redis_port)], "postgres": [stack.postgres_exporter()]}
        # Workers first: a fresh Redis sells nothing (gateways are not ready) until a worker
        # has reconciled it with the ledger.
        workers = [stack.worker(f"worker-{i}", redis_url, database_url, stack.WORKER_ENV) for i in (1, 2)]
        gateways = [stack.gateway(f"gateway-{i}", redis_url, database_url) for i in (1, 2)]
        lb = stack.nginx([port for _, port in gateways])
        failures = []
        if lb is None:
            log("nginx not found: the sale goes to the gateways directly (compose/nginx.conf untested)")
            buy_urls = [url for url, _ in gateways]
        else:
            buy_urls = [lb]
            status, _, _ = http("GET", f"{lb}/metrics")
            if status != 404:
                failures.append(f"load balancer: /metrics answered {status}, expected 404")
        targets = {
            JOBS["gateway_job"]: [port for _, port in gateways],
            JOBS["worker_job"]: workers,
            JOBS["redis_job"]: exporters["redis"],
            JOBS["postgres_job"]: exporters["postgres"],
        }
        scraped = sum(len(ports) for ports in targets.values())
        prom_url = stack.prometheus(targets)
        prom = Prometheus(prom_url)
        # Scrape the idle system first, so the sale shows up as rates and latencies rather
        # than as counters that were already final at the first scrape.
        wait_until(
            "Prometheus's first scrape of every gateway, worker and exporter",
            lambda: prom.scalar("count(up == 1)") == scraped
            and prom.scalar("sum(redis_up) + sum(pg_up)") == 2,
            30,
            interval=0.25,
        )
        log(
            f"stack up and scraped in {time.monotonic() - started:.1f}s: 2 gateways, 2 workers, ledger,"
            f" redis-exporter, postgres-exporter, Prometheus at {prom_url}"
        )

        event = f"dash-{secrets.token_hex(4)}"
        seen, orders = drive_sale(gateways[0][0], buy_urls, stack.admin_token, event)
        log(f"sale on {event}: " + ", ".join(f"{k}={v}" for k, v in sorted(seen.items())))

        # Workers confirm every order, then Prometheus scrapes the final books from both.
        def drained():
            status, _, body = http("GET", f"{gateways[1][0]}/v1/events/{event}")
            return status == 200 and body["remaining"] == 0 and body["confirmed"] == STOCK

        wait_until(f"workers to confirm all {STOCK} units", drained, 30)
        # Every unit is in the ledger too (the workers write it before they confirm).
        recorded = stack.psql(
            f"select coalesce(sum(quantity), 0) from orders where event_id = '{event}' and status = 'confirmed'"
        )
        if recorded != str(STOCK):
            raise CheckFailed(f"the ledger has {recorded} confirmed units of {event}, expected {STOCK}")
        log(f"ledger: {recorded} units of {event} recorded, as in Redis")
        made = read_back(prom, [url for url, _ in gateways], buy_urls, event, orders)
        log("reads: " + ", ".join(f"{k}={v}" for k, v in sorted(made.items())) + " (every order confirmed)")
        # Drift is measured every 2 s: wait until every worker reports 0 for the event, or
        # FlashsaleLedgerDrift would see a stale in-flight value.
        wait_until(
            "Prometheus to scrape the confirmed books and a ledger drift of 0 from every worker",
            lambda: (
                prom.scalar(f'min(flashsale_event_confirmed{{event="{event}"}})') == STOCK
                and prom.scalar(f'count(flashsale_event_confirmed{{event="{event}"}})') == len(workers)
                and prom.scalar(f'count(flashsale_ledger_drift_units{{event="{event}"}} == 0)') == len(workers)
                and prom.scalar("count(up == 1)") == scraped
                and prom.scalar('sum(flashsale_purchases_total{outcome="replayed"})') == seen["replayed"]
            ),
            30,
            interval=0.25,
        )

        # The sale created new series (HTTP routes and statuses, the event's gauges); rate()
        # needs two samples of each. A series that already existed 2 s ago (two 1 s scrapes)
        # has them.
        def every_series_sampled_twice():
            before = prom.scalar("count({__name__=~'flashsale_.+'} offset 2s)")
            return before is not None and before == prom.scalar("count({__name__=~'flashsale_.+'})")

        wait_until("a second sample of every new series", every_series_sampled_twice, 30, interval=0.25)

        failures += check_dashboard(prom, event, args.rate_interval)
        failures += check_rules(prom)
        elapsed = time.monotonic() - started
        if failures:
            log(f"FAILED after {elapsed:.1f}s:")
            for failure in failures:
                print(f"  - {failure}", file=sys.stderr)
            return 1
        log(f"every panel query returned data ({elapsed:.1f}s)")
        return 0
    except StackError as error:
        log(f"FAILED: {error}")
        for name in [name for name, _ in stack.procs] + ["postgres"]:
            tail = stack.tail(name, 8)
            if tail:
                print(f"--- {name} log (last lines)\n{tail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
