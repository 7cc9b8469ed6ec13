#!/usr/bin/env bash
# Installs everything (idempotent) and runs the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled  # tests start a throw-away local cluster
exec .venv/bin/python -m pytest "$@"
