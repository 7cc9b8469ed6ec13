#!/usr/bin/env bash
# The main job: install (idempotent), build the synthetic demo model when no checkpoint is
# given, then serve the app at http://127.0.0.1:8000 with the embedded database.
#   CXR_CHECKPOINT=/path/to/checkpoint   serve your own model instead of the demo one
#   CXR_MONGODB_URI=mongodb://...        use your MongoDB instead of the embedded SecantusDB
#   CXR_METRICS_PORT=8080                Ray's Prometheus metrics port (Serve + app metrics)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# A demo model from before the out-of-scope gate lacks scope_gate.npz: `cxr demo` keeps its trained
# stages and only redoes the final step (calibration, gate, report, export).
if [ -z "${CXR_CHECKPOINT:-}" ] && [ ! -f runs/demo/run/checkpoint/scope_gate.npz ]; then
    echo "No CXR_CHECKPOINT given: training the synthetic demo model (a few minutes on 2 CPU cores)."
    .venv/bin/cxr demo
fi
# The local demo is the one place the app's own authentication may be off (the pages say so);
# CXR_AUTH=api_key bash scripts/run.sh runs it with API keys and sign-in (`cxr keys create`).
export CXR_DEMO=true CXR_AUTH=${CXR_AUTH:-off}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}  # a single-user local demo on loopback
# Our own cluster (scripts/local_cluster.sh, shared with the benchmark), stopped again on exit.
bash scripts/local_cluster.sh start
trap 'bash scripts/local_cluster.sh stop' EXIT
echo "Serving at http://127.0.0.1:8000 (metrics: http://127.0.0.1:${CXR_METRICS_PORT:-8080}/metrics). Ctrl-C stops."
.venv/bin/serve run --address auto serve_config.yaml
