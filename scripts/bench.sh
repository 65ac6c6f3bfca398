#!/usr/bin/env bash
# One command: set up (venv, Python deps, mosquitto, victoria-metrics), then run the benchmark.
# Arguments go to `python -m bench.run`: --quick (about a minute), --scenarios a,b, --count N, --out DIR.
# Results: bench/results/latest.json and latest.md. Only 127.0.0.1 is ever contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m bench.run "$@"
