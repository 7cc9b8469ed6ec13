#!/usr/bin/env bash
# The local one-node Ray cluster that serves serve_config.yaml. scripts/run.sh (the main job) and
# bench/serve_throughput.py (the benchmark) both start it here, so the benchmark measures what ships.
#   bash scripts/local_cluster.sh start [RAY START ARGS]   # refuse first if serve_config.yaml cannot be placed
#   bash scripts/local_cluster.sh stop
# Environment: CXR_RAY_CPUS (default: this machine's cores, `nproc`) logical CPUs; CXR_METRICS_PORT
# (8080) Ray's Prometheus port. Every CXR_* variable set here reaches the app: replicas inherit it.
set -euo pipefail
cd "$(dirname "$0")/.."
# A single-user local cluster on loopback; Ray 2.60 would otherwise turn token auth on.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
case "${1:-}" in
    start)
        cpus=${CXR_RAY_CPUS:-$(nproc)}
        # Logical CPUs decide placement: a replica that does not fit waits forever, so say so now.
        .venv/bin/python -m serve.config_check serve_config.yaml --cpus "$cpus" >/dev/null
        # The dashboard (loopback only) is what `serve deploy serve_config.yaml` talks to.
        .venv/bin/ray start --head --node-ip-address 127.0.0.1 --num-cpus "$cpus" \
            --metrics-export-port "${CXR_METRICS_PORT:-8080}" \
            --include-dashboard true --dashboard-host 127.0.0.1 --disable-usage-stats "${@:2}" >/dev/null
        ;;
    stop)
        .venv/bin/ray stop --force >/dev/null 2>&1 || true
        ;;
    *)
        echo "usage: $0 start|stop" >&2
        exit 2
        ;;
esac
