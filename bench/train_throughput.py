"""Training and model-only inference throughput of a backbone, side by side, in one run.

    .venv/bin/python bench/train_throughput.py [--backbone densenet161] [--image-size 224]

Stage 1 = frozen backbone forward without autograd + head forward/backward/step;
stage 2 = full forward/backward/step. Inference = eval forward under
inference_mode at batch 1/8/32, contiguous and channels_last. Synthetic tensors,
so the numbers are the model's alone (decode/augment are measured elsewhere).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from cxr_model.classifier import resolve_device
from cxr_model.network import build_model


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="densenet161")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--infer-batches", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=8.0, help="minimum measured time per inference case")
    parser.add_argument("--device", default="auto")
    return parser


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(model, device, stage: str, batch: int, size: int, steps: int) -> float:
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, model.head.out_features, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    if stage == "stage1":
        model.backbone.eval()
        model.head.train()
        params = model.head.parameters()
    else:
        model.train()
        params = model.parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step():
        if stage == "stage1":
            with torch.no_grad():
                features = model.backbone(x)
            logits = model.head(features)
        else:
            logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - started)


@torch.inference_mode()
def infer_rate(model, device, batch: int, size: int, channels_last: bool, seconds: float) -> float:
    model.eval()
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model(x)
    _sync(device)
    started, images = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        model(x)
        images += batch
    _sync(device)
    return images / (time.perf_counter() - started)


def main(args) -> None:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    print(
        f"{args.backbone} at {args.image_size}px on {device} ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}"
    )
    model = build_model(args.backbone, 4, "none").to(device)
    s1 = train_rate(model, device, "stage1", args.train_batch, args.image_size, args.train_steps)
    s2 = train_rate(model, device, "stage2", args.train_batch, args.image_size, args.train_steps)
    print(f"\ntraining (batch {args.train_batch})   images/s")
    print(f"  stage 1 (frozen backbone)   {s1:8.2f}")
    print(f"  stage 2 (full fine-tune)    {s2:8.2f}")
    print(f"  stage1 / stage2             {s1 / s2:8.2f}x")
    print("\ninference (model only)   contiguous  channels_last   ratio")
    for batch in (int(b) for b in args.infer_batches.split(",")):
        plain = infer_rate(
            build_model(args.backbone, 4, "none").to(device), device, batch, args.image_size, False, args.seconds
        )
        fast = infer_rate(
            build_model(args.backbone, 4, "none").to(device), device, batch, args.image_size, True, args.seconds
        )
        print(f"  batch {batch:3d}              {plain:9.2f}   {fast:12.2f}   {fast / plain:5.2f}x")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
