#!/usr/bin/env bash
# Installs everything (idempotent) and runs the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The external page checkers the browser tests run (axe-core; the Nu HTML Checker, which needs Java),
# at the versions their lock pins; reinstalled when the lock changes. Without npm those tests skip
# (CI installs it, and there a missing checker fails).
checkers=tests/serve/checkers
if command -v npm >/dev/null 2>&1 && ! cmp -s "$checkers/package-lock.json" "$checkers/node_modules/.installed-lock"; then
    npm ci --prefix "$checkers" --no-audit --no-fund --loglevel=error >/dev/null
    cp "$checkers/package-lock.json" "$checkers/node_modules/.installed-lock"
fi
export RAY_AUTH_MODE=disabled  # tests start a throw-away local cluster
exec .venv/bin/python -m pytest "$@"
