#!/usr/bin/env bash
# The main job: install (idempotent), build the demo model when no checkpoint is given, then serve
# the app at http://127.0.0.1:8000 with the embedded database.
#   CXR_CHECKPOINT=/path/to/checkpoint   serve your own model instead of the demo one
#   CXR_DEMO_DATA=/path/to/dataset       train the demo model on your data set (Kaggle, Roboflow, CSV or
#                                        class folders; up to 300 images per label) instead of generated pictures
#   CXR_MONGODB_URI=mongodb://...        use your MongoDB instead of the embedded SecantusDB
#   CXR_METRICS_PORT=8080                Ray's Prometheus metrics port (Serve + app metrics)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# A single-user local demo on loopback: its Ray clusters (training, then serving) run without
# Ray's token authentication, as tests do; a shared cluster keeps it on.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
if [ -z "${CXR_CHECKPOINT:-}" ]; then
    if [ -n "${CXR_DEMO_DATA:-}" ]; then
        # One run folder per data set, so another CXR_DEMO_DATA never reuses this one's model.
        demo="runs/demo-data/$(realpath "$CXR_DEMO_DATA" | sha256sum | cut -c1-12)"
        what="on $CXR_DEMO_DATA, up to 300 images per label (about 12 minutes on 2 CPU cores)"
    else
        demo=runs/demo
        what="on generated pictures, about 5 minutes on 2 CPU cores (set CXR_DEMO_DATA to train on real radiographs)"
    fi
    # A run from before the layout gate lacks layout_gate.npz: `cxr demo` keeps the trained stages
    # and only redoes the final step (calibration, gates, report, export).
    if [ ! -f "$demo/run/checkpoint/layout_gate.npz" ]; then
        echo "No CXR_CHECKPOINT given: training the demo model $what."
        .venv/bin/cxr demo --output-dir "$demo" ${CXR_DEMO_DATA:+--data "$CXR_DEMO_DATA"}
    fi
    export CXR_CHECKPOINT="$PWD/$demo/run/checkpoint"
fi
# The local demo is the one place the app's own authentication may be off (the pages say so);
# CXR_AUTH=api_key bash scripts/run.sh runs it with API keys and sign-in (`cxr keys create`).
export CXR_DEMO=true CXR_AUTH=${CXR_AUTH:-off}
# Our own cluster (scripts/local_cluster.sh, shared with the benchmark), stopped again on exit.
echo "Starting the local Ray cluster and deploying serve_config.yaml (model: $CXR_CHECKPOINT)."
bash scripts/local_cluster.sh start
trap 'bash scripts/local_cluster.sh stop' EXIT
.venv/bin/serve deploy serve_config.yaml >/dev/null
# Replica logs go to Ray's log folder, not here: this terminal shows progress, then the URL.
.venv/bin/python -m serve.wait_ready --timeout 900
echo "Ready: http://127.0.0.1:8000  (API: /api/v1/openapi.json, metrics:" \
    "http://127.0.0.1:${CXR_METRICS_PORT:-8080}/metrics, logs: /tmp/ray/session_latest/logs/serve/). Ctrl-C stops."
while true; do sleep 3600; done
