#!/usr/bin/env bash
# One entry point that works on a fresh machine: it installs what it needs (a Python virtual
# environment from requirements-dev.txt, Azurite from package-lock.json), then runs the command.
#   ./dev.sh demo       the main job, locally, on embedded defaults (Azurite + the Azure ML emulator)
#   ./dev.sh up         a local setup that stays up: Azurite, the emulator and the app's functions on fixed
#                       ports, writing local.settings.json for the CLI and func start (python -m localdev.up --help)
#   ./dev.sh test       the test suite (starts its own Azurite and emulator on free ports)
#   ./dev.sh lint       ruff
#   ./dev.sh emulator   the Azure ML emulator alone (python -m emulator --help)
#   ./dev.sh bench      the benchmarks: JSON to stdout and bench/results/latest.json (python -m bench --help)
#   ./dev.sh mutants    the mutation check: each listed broken build must fail its tests (.ci/mutants.py)
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  local python="${PYTHON:-python3}"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "dev.sh: Python 3.10 or newer is required ($python is $("$python" --version 2>&1))" >&2; exit 1; }
  if [ ! -x .venv/bin/python ] || [ requirements.txt -nt .venv/.installed ] || [ requirements-dev.txt -nt .venv/.installed ]; then
    echo "dev.sh: installing the Python environment (.venv from requirements-dev.txt; about a minute the first time) ..." >&2
    "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    touch .venv/.installed
  fi
  if [ ! -x node_modules/.bin/azurite ] || [ package-lock.json -nt node_modules/.installed ]; then
    command -v npm >/dev/null || { echo "dev.sh: npm (Node.js 18+) is required for Azurite" >&2; exit 1; }
    echo "dev.sh: installing Azurite (npm ci, from package-lock.json) ..." >&2
    npm ci --no-audit --no-fund --loglevel=error
    touch node_modules/.installed
  fi
}

browser() {
  # The status page's browser test drives Debian's Chromium; install it where we may (root), else the
  # test is skipped with a reason.
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
        || echo "dev.sh: could not install chromium; the browser test will be skipped" >&2
    else
      echo "dev.sh: chromium/chromedriver missing (apt-get install chromium chromium-driver); the browser test will be skipped" >&2
    fi
  fi
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  demo) setup; exec .venv/bin/python -m localdev.demo "$@" ;;
  up) setup; exec .venv/bin/python -m localdev.up "$@" ;;
  test) setup; browser; exec .venv/bin/python -m pytest "$@" ;;
  lint) setup; .venv/bin/ruff check . && .venv/bin/ruff format --check . ;;
  emulator) setup; exec .venv/bin/python -m emulator "$@" ;;
  bench) setup; exec .venv/bin/python -m bench "$@" ;;
  mutants) setup; exec .venv/bin/python .ci/mutants.py "$@" ;;
  *) echo "usage: ./dev.sh demo|up|test|lint|emulator|bench|mutants [args]" >&2; exit 2 ;;
esac
