"""The Ray Train worker loop, shared by both stages.

Stage 1 (``frozen``): the backbone runs in eval mode under ``no_grad`` (no
autograd graph, no backward through it, BatchNorm statistics untouched) and
only the head is trained, wrapped in DDP. Stage 2: the whole network trains.
Each epoch ends with a validation pass (sharded across workers and gathered),
one ``ray.train.report`` with metrics and, from rank 0, a checkpoint holding
weights, model card and the optimiser/scheduler/early-stopping state, which
``ray.train.get_checkpoint()`` hands back after an interruption.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from cxr_model.checkpoint import load_network, save_checkpoint
from cxr_model.classifier import probabilities_from_logits
from training.augment import build_augmentation
from training.config import TrainConfig
from training.dataset import ManifestDataset
from training.losses import build_loss, class_weights
from training.metrics import classification_metrics
from training.splits import load_manifest, split_entries

TRAIN_STATE_FILE = "train_state.pt"
# Ray Train V2 tees print() to both stdout and its logger; logging shows each line once.
log = logging.getLogger(__name__)


def _gather(obj, world: int) -> list:
    if world == 1 or not dist.is_initialized():
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _autocast(device: torch.device):
    # bf16 autocast is the GPU fast path; CPU training stays fp32.
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _validate(model, entries, root, card, cfg, device, rank, world, loss_fn) -> tuple[dict, float]:
    shard = entries[rank::world]
    loader = DataLoader(ManifestDataset(root, shard, card.label_set, card.preprocess_spec),
                        batch_size=cfg.eval_batch_size, num_workers=min(cfg.loader_workers, 2))
    model.eval()
    probs, targets, loss_sum = [], [], 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with _autocast(device):
                logits = model(x).float()
            loss_sum += float(loss_fn(logits, y)) * len(y)
            probs.append(probabilities_from_logits(logits, card.task).cpu().numpy())
            targets.append(y.cpu().numpy())
    local = (np.concatenate(probs) if probs else None, np.concatenate(targets) if targets else None, loss_sum)
    parts = [p for p in _gather(local, world) if p[0] is not None]
    all_probs = np.concatenate([p[0] for p in parts])
    all_targets = np.concatenate([p[1] for p in parts])
    metrics = classification_metrics(all_targets, all_probs, card.label_set)
    return metrics, sum(p[2] for p in parts) / max(len(all_targets), 1)


def train_stage_loop(loop_config: dict) -> None:
    cfg = TrainConfig.from_dict(loop_config["train_config"])
    stage = loop_config["stage"]
    stage_cfg = getattr(cfg, stage)
    frozen = stage == "stage1"
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + 1000 * rank)

    manifest = load_manifest(loop_config["manifest_path"])
    root = Path(manifest["root"])
    model, card = load_network(loop_config["init_checkpoint"])
    label_set, spec = card.label_set, card.preprocess_spec
    train_entries, val_entries = split_entries(manifest, "train"), split_entries(manifest, "val")

    state = {"epoch": 0, "best_score": -1.0, "stale": 0, "history": []}
    resume = ray.train.get_checkpoint()
    saved = None
    if resume is not None:
        with resume.as_directory() as directory:
            model.load_state_dict(torch.load(Path(directory) / "weights.pt", map_location="cpu"))
            saved = torch.load(Path(directory) / TRAIN_STATE_FILE, map_location="cpu")
        state = saved["state"]
        if rank == 0:
            log.info(f"[{stage}] resuming after epoch {state['epoch']} (best val macro-F1 {state['best_score']:.4f})")

    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if frozen:
        model.backbone.requires_grad_(False)
        backbone = model.backbone.to(device).eval()
        head = ray.train.torch.prepare_model(model.head)
        forward_net = model.to(device)
    else:
        head = None
        forward_net = ray.train.torch.prepare_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage_cfg.lr, weight_decay=stage_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(stage_cfg.epochs, 1))
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])

    weights = class_weights(train_entries, label_set) if cfg.class_weighting else None
    loss_fn = build_loss(cfg.loss, label_set, weights, cfg.focal_gamma, cfg.label_smoothing).to(device)
    train_set = ManifestDataset(root, train_entries, label_set, spec,
                                build_augmentation(cfg.hflip) if cfg.augment else None)

    for epoch in range(state["epoch"], stage_cfg.epochs):
        if world > 1:
            sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                            num_workers=cfg.loader_workers, pin_memory=device.type == "cuda",
                            persistent_workers=False)
        (head if frozen else forward_net).train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(loader, desc=f"{stage} epoch {epoch + 1}/{stage_cfg.epochs}", mininterval=10,
                   disable=rank != 0 or not cfg.progress, leave=False)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                if frozen:
                    with torch.no_grad():
                        features = backbone(x)
                    logits = head(features)
                else:
                    logits = forward_net(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
        scheduler.step()
        elapsed = time.perf_counter() - started
        totals = _gather((loss_sum, seen, elapsed), world)
        train_loss = sum(t[0] for t in totals) / max(sum(t[1] for t in totals), 1)
        images_per_s = sum(t[1] for t in totals) / max(max(t[2] for t in totals), 1e-9)

        val, val_loss = _validate(model, val_entries, root, card, cfg, device, rank, world, loss_fn)
        score = val["macro_f1"]
        improved = score > state["best_score"] + 1e-9
        state["best_score"] = max(score, state["best_score"])
        state["stale"] = 0 if improved else state["stale"] + 1
        state["epoch"] = epoch + 1
        row = {
            "stage": stage, "epoch": epoch + 1, "world_size": world, "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val["accuracy"], "val_macro_f1": score, "val_macro_roc_auc": val["macro_roc_auc"],
            "val_ece": val["ece"], "lr": scheduler.get_last_lr()[0], "train_images_per_s": images_per_s,
        }
        state["history"].append(row)
        if rank == 0:
            auc = "n/a" if row["val_macro_roc_auc"] is None else f"{row['val_macro_roc_auc']:.3f}"
            log.info(f"[{stage}] epoch {epoch + 1}/{stage_cfg.epochs} train_loss {train_loss:.4f} "
                  f"val_loss {val_loss:.4f} val_acc {val['accuracy']:.3f} val_macro_f1 {score:.3f} "
                  f"val_auc {auc} {images_per_s:.1f} img/s{' *best*' if improved else ''}")
        metrics = {k: v for k, v in row.items() if v is not None}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                card.metrics = {**card.metrics, stage: {**row, "val": val}}
                card.created_at = ""
                save_checkpoint(model, card, tmp)
                torch.save({"state": state, "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict()}, Path(tmp) / TRAIN_STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if state["stale"] >= stage_cfg.patience:
            if rank == 0:
                log.info(f"[{stage}] early stop: no better val macro-F1 for {stage_cfg.patience} epochs")
            break
