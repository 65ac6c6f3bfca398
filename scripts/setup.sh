#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs the gateway into it. Idempotent and quiet.
# Usage: scripts/setup.sh [--test]   (--test also installs test tools and the servers the
# integration tests run: Debian packages mosquitto, victoria-metrics and redis-server)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is required (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi

if [ "${1:-}" = "--test" ]; then
  missing=()
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto mosquitto-clients)
  command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
  command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian starts a system mosquitto on 1883 where systemd runs; tests use their own ports, so that is harmless.
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)${1:-}
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  extra=""; [ "${1:-}" = "--test" ] && extra="[test]"
  .venv/bin/python -m pip install -q -e ".${extra}" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import gateway, aiomqtt, amqtt, orjson, influxdb_client, pydantic_settings' 
  touch "$stamp"
fi
