#!/usr/bin/env bash
# GPU readiness in one go, at most 8 minutes, on a machine with a CUDA GPU and this checkout:
#   bash bench/gpu_check.sh
# 1. the model-only ceiling (bf16 + channels_last, eager and torch.compile, batch 1..256);
# 2. the GPU overlay's serve config (scripts/kube_serve_config.py's gpu variant: 1 GPU + 2 CPUs per
#    classifier replica, batches of up to 32) served end to end over HTTP on loopback at 64-256
#    clients, with the CPU cost per image of every process group and the GPU's utilisation.
# Prints everything to stdout; each phase is bounded in time (`timeout`).
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh >/dev/null
export RAY_AUTH_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no nvidia-smi"; exit 2; }
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== [1] model-only ceiling"
timeout 240 .venv/bin/python bench/gpu_ceiling.py

echo "== [2] served: the GPU overlay's settings, 64/128/256 clients"
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > /tmp/cxr-gpu-util.txt &
smi=$!
timeout 300 .venv/bin/python bench/serve_throughput.py --variant gpu --concurrency 64,128,256 --seconds 15
kill "$smi" 2>/dev/null
sort -n /tmp/cxr-gpu-util.txt | awk '{v[NR]=$1} END {if (NR) printf "GPU utilisation over the served phases: median %s%%, max %s%% (%d samples)\n", v[int((NR+1)/2)], v[NR], NR}'
