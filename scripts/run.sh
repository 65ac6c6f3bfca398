#!/usr/bin/env bash
# One command: set up, then run the gateway on its embedded default (no external service).
# Extra arguments go to `gateway run`, e.g. scripts/run.sh --config config/gateway.external.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gateway run --config config/gateway.yaml "$@"
