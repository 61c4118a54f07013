#!/usr/bin/env python3
"""A/B of two gateway builds or environments on one Redis, interleaved so noise hits both.

Started by bench/run.sh when BENCH_AB_ENV or BENCH_AB_BIN is set: gateway A runs as built,
gateway B with BENCH_AB_ENV added to its environment (e.g.
LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 to try another allocator without touching
the code) and/or running the binary BENCH_AB_BIN (a build of another commit). Each round
measures both, in alternating order: the wrk closed-loop maximum on the accepted and on the
sold-out path, and a fixed-rate accepted run at BENCH_AB_RATE (default 10000/s), with the same
checks as bench.py. Prints medians (min-max) of BENCH_AB_ROUNDS (default 4).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (reads the same environment as bench.py)

GATEWAYS = {
    "A": (os.environ["GW_URL"], int(os.environ["GW_PID"]), "as built"),
    "B": (os.environ["GW_B_URL"], int(os.environ["GW_B_PID"]),
          " ".join(x for x in (os.environ.get("BENCH_AB_BIN", ""), os.environ.get("BENCH_AB_ENV", "")) if x)),
}
ROUNDS = int(os.environ.get("BENCH_AB_ROUNDS", "4"))
RATE = float(os.environ.get("BENCH_AB_RATE", "10000"))


def main():
    results = {name: {"max": [], "max_gw": [], "so": [], "so_gw": [], "rate_gw": [], "rate_p50": [], "rate_p99": []}
               for name in GATEWAYS}
    for rnd in range(1, ROUNDS + 1):
        for name in ("A", "B") if rnd % 2 else ("B", "A"):
            bench.GW_URL, bench.GW_PID, _ = GATEWAYS[name]
            top = bench.quiet(lambda: bench.closed_loop("accepted", "none", f"{name}{rnd}"))
            sold_out = bench.quiet(lambda: bench.closed_loop("sold_out", "none", f"{name}{rnd}"))
            fixed = bench.quiet(lambda: bench.fixed_rate("accepted", RATE, bench.connections_for(RATE), "none",
                                                         f"{name}{rnd}", 0, "ab"))
            r = results[name]
            r["max"].append(top["throughput"])
            r["max_gw"].append(top["cpu_us_per_req"]["gateway"])
            r["so"].append(sold_out["throughput"])
            r["so_gw"].append(sold_out["cpu_us_per_req"]["gateway"])
            r["rate_gw"].append(fixed["cpu_us_per_req"]["gateway"])
            r["rate_p50"].append(fixed["latency_us"]["p50"])
            r["rate_p99"].append(fixed["latency_us"]["p99"])
            bench.log(f"  {name} round {rnd}: max {top['throughput']:,.0f}/s at {top['cpu_us_per_req']['gateway']} us "
                      f"gateway CPU/req; sold-out {sold_out['throughput']:,.0f}/s at "
                      f"{sold_out['cpu_us_per_req']['gateway']} us; {RATE:,.0f}/s: {fixed['cpu_us_per_req']['gateway']} us/req, "
                      f"p99 {fixed['latency_us']['p99']} us")
    print(f"| gateway | max accepted /s (wrk -c {bench.CONNS}) | gateway CPU us/req at max | "
          f"max sold-out /s | gateway CPU us/req, sold-out | "
          f"gateway CPU us/req at {RATE:,.0f}/s | p50 | p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (_, _, text) in GATEWAYS.items():
        r = results[name]
        f = lambda key, digits=0, scale=1.0: bench.fmt_range(bench.stat(r[key]), digits, scale)
        print(f"| {name}: {text} | {f('max')} | {f('max_gw', 1)} | {f('so')} | {f('so_gw', 1)} | {f('rate_gw', 1)} | "
              f"{f('rate_p50', 2, 1e-3)} ms | {f('rate_p99', 2, 1e-3)} ms |")


if __name__ == "__main__":
    try:
        main()
    except bench.StackError as error:  # bench.BenchError included
        bench.log(f"FAILED: {error}")
        sys.exit(1)
