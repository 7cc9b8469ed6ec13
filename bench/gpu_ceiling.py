"""Model-only ceiling on a CUDA GPU: bf16 autocast + channels_last, eager and torch.compile.

    .venv/bin/python bench/gpu_ceiling.py [--backbone densenet161] [--batches 1,8,32,64,128,256]

Prints img/s per batch size for each mode; every measurement is bounded in time. Part of
bench/gpu_check.sh; needs a CUDA device (exits 2 without one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cxr_model.network import build_model  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="densenet161", help="torchvision architecture")
    parser.add_argument("--image-size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--batches", default="1,8,32,64,128,256", help="batch sizes, eager")
    parser.add_argument("--compile-batches", default="64,256", help="batch sizes for torch.compile (each compiles)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per batch size")
    return parser


def rate(model, batch: int, size: int, seconds: float) -> float:
    x = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        started, images = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            model(x)
            images += batch
        torch.cuda.synchronize()
    return images / (time.perf_counter() - started)


def main(args) -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 2
    torch.backends.cudnn.benchmark = True
    model = build_model(args.backbone, 4, "none").cuda().eval().to(memory_format=torch.channels_last)
    print(f"{args.backbone} at {args.image_size}px on {torch.cuda.get_device_name()}, bf16 + channels_last")
    for batch in [int(b) for b in args.batches.split(",")]:
        print(
            f"  eager    batch {batch:4d}: {rate(model, batch, args.image_size, args.seconds):9.1f} img/s", flush=True
        )
    compiled = torch.compile(model)
    for batch in [int(b) for b in args.compile_batches.split(",")]:
        started = time.perf_counter()
        value = rate(compiled, batch, args.image_size, args.seconds)
        print(f"  compile  batch {batch:4d}: {value:9.1f} img/s (compile + run {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
