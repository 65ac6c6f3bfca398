#!/usr/bin/env bash
# One command: set up everything the tests need (venv, Python deps, mosquitto, victoria-metrics),
# then lint, type-check and run every test (unit, contract, integration against real servers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
echo "== ruff";  .venv/bin/ruff check .
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
