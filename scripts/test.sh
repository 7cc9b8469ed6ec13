#!/usr/bin/env bash
# Installs everything (idempotent) and runs the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# axe-core for the accessibility test, at the version its lock pins (npm ci); without npm that test
# skips (CI installs npm, and there a missing checker fails).
axe=tests/serve/axe
wanted=$(sed -n 's/.*"axe-core": "\(.*\)".*/\1/p' "$axe/package.json")
installed=$(sed -n 's/^  "version": "\(.*\)".*/\1/p' "$axe/node_modules/axe-core/package.json" 2>/dev/null || true)
if command -v npm >/dev/null 2>&1 && [ "$wanted" != "$installed" ]; then
    npm ci --prefix "$axe" --no-audit --no-fund --loglevel=error >/dev/null
fi
export RAY_AUTH_MODE=disabled  # tests start a throw-away local cluster
exec .venv/bin/python -m pytest "$@"
