#!/usr/bin/env python3
"""Checks that every panel of grafana/dashboards/flashsale.json shows data from a real system.

Grafana cannot run here, so this script does what Grafana would: it starts a private stack
(redis-server, PostgreSQL for the ledger, two workers and two gateways from target/$PROFILE,
nginx with compose/nginx.conf in front of the gateways when an nginx binary is available, and
a real Prometheus scraping them every second with compose/alerts.yml loaded), drives a short sale
through it (accepted orders, sold-outs, replays, a per-user limit, a sale not yet open,
invalid requests), waits until Prometheus has scraped the result, then runs every panel
query with the dashboard variables substituted against Prometheus's /api/v1/query.

It fails (exit 1) when a panel query returns an empty result or an error, when the $event
variable's query does not list the sale's event, when a panel does not use the provisioned
data source uid, or when an alert rule fails to evaluate or fires during a healthy sale.
Every process it starts is stopped on exit, Ctrl-C included.

Usage: scripts/check-dashboard.py [--profile release|debug] [--rate-interval 30s]
Needs: redis-server, PostgreSQL, prometheus (scripts/install-deps.sh ops), built binaries
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

import private_stack
from private_stack import ROOT, Stack, StackError, free_port, http, wait_until
DASHBOARD = ROOT / "grafana/dashboards/flashsale.json"
DATASOURCE = ROOT / "grafana/provisioning/datasources/prometheus.yml"
ALERTS = ROOT / "compose/alerts.yml"
NGINX_CONF = ROOT / "compose/nginx.conf"

STOCK = 40
BUYERS = 60  # distinct buyers: STOCK of them get an order, the rest a sold-out 409


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

    def prometheus(self, gateway_ports: list[int], worker_ports: list[int]) -> str:
        port = free_port()
        # JSON is YAML: no YAML library needed. Job names match compose/prometheus.yml,
        # which the alert rules select on.
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "gateway",
                    "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in gateway_ports]}],
                },
                {
                    "job_name": "worker",
                    "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in worker_ports]}],
                },
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


def drive_sale(admin: str, buy_urls: list[str], token: str, event: str) -> dict:
    """A short sale with every purchase outcome but `error`; returns what the buyers saw."""
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
    expect(buy(0, "greedy", 2, "greedy-1"), 202, "accepted")
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
    return seen


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

    # The $event variable: its label_values() query must offer the sale's event.
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    if "event" not in variables:
        failures.append("dashboard has no $event template variable")
    else:
        definition = variables["event"].get("definition", "")
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", definition)
        if not match:
            failures.append(f"$event: unexpected definition {definition!r}")
        else:
            values = prom.api(f"/api/v1/label/{match.group(2)}/values", **{"match[]": match.group(1)})
            status = "ok" if event in values else "FAIL"
            log(f"{status:4} variable $event = {definition} -> {values}")
            if event not in values:
                failures.append(f"$event: {definition} does not list {event}")

    substitutions = {
        "event": regex_escape(event),
        "__rate_interval": rate_interval,
        "__interval": "5s",
        "__interval_ms": "5000",
        "__range": "5m",
        "__range_s": "300",
        "__range_ms": "300000",
    }
    for panel in panels(dashboard):
        title = panel.get("title") or f"panel {panel.get('id')}"
        if (panel.get("datasource") or {}).get("uid") != datasource_uid:
            failures.append(f"{title}: panel data source uid is not {datasource_uid!r}")
        if not panel.get("targets"):
            failures.append(f"{title}: no query")
        for target in panel.get("targets", []):
            ref = target.get("refId", "?")
            if (target.get("datasource") or {}).get("uid") != datasource_uid:
                failures.append(f"{title} [{ref}]: target data source uid is not {datasource_uid!r}")
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


def check_rules(prom: Prometheus) -> list[str]:
    """Every alert rule evaluates without error, and none is pending or firing."""

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
    status = "ok" if not failures else "FAIL"
    log(f"{status:4} {len(rules)} alert rules of {ALERTS.relative_to(ROOT)} evaluate cleanly and none fires")
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
        redis_url = f"redis://127.0.0.1:{stack.redis()}"
        database_url = stack.postgres()
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
        prom_url = stack.prometheus([port for _, port in gateways], [port for port in workers])
        prom = Prometheus(prom_url)
        # Scrape the idle system first, so the sale shows up as rates and latencies rather
        # than as counters that were already final at the first scrape.
        wait_until(
            "Prometheus's first scrape of every gateway and worker",
            lambda: prom.scalar("count(up == 1)") == len(gateways) + len(workers),
            30,
            interval=0.25,
        )
        log(
            f"stack up and scraped in {time.monotonic() - started:.1f}s: 2 gateways, 2 workers, ledger,"
            f" Prometheus at {prom_url}"
        )

        event = f"dash-{secrets.token_hex(4)}"
        seen = drive_sale(gateways[0][0], buy_urls, stack.admin_token, event)
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
        # Drift is measured every 2 s: wait until every worker reports 0 for the event, or
        # FlashsaleLedgerDrift would see a stale in-flight value.
        wait_until(
            "Prometheus to scrape the confirmed books and a ledger drift of 0 from every worker",
            lambda: (
                prom.scalar(f'min(flashsale_event_confirmed{{event="{event}"}})') == STOCK
                and prom.scalar(f'count(flashsale_event_confirmed{{event="{event}"}})') == len(workers)
                and prom.scalar(f'count(flashsale_ledger_drift_units{{event="{event}"}} == 0)') == len(workers)
                and prom.scalar("count(up == 1)") == len(gateways) + len(workers)
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
