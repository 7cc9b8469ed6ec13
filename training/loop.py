"""The Ray Train worker loop, shared by both stages.

Stage 1 (``frozen``): the backbone runs in eval mode under ``no_grad`` (no
autograd graph, no backward through it, BatchNorm statistics untouched) and
only the head is trained, wrapped in DDP. Stage 2: the whole network trains.
Each epoch ends with a validation pass (sharded across workers and gathered),
one ``ray.train.report`` with metrics and, from rank 0, a checkpoint holding
weights, model card and the optimiser/scheduler/early-stopping state, which
``ray.train.get_checkpoint()`` hands back after an interruption.

Laid out like torchvision's classification reference: ``setup_stage`` builds
(or restores) the run, ``train_one_epoch`` and ``evaluate`` do one pass each,
``report_epoch`` checkpoints, and ``train_stage_loop`` only sequences them.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from cxr_model.checkpoint import WEIGHTS_FILE, ModelCard, load_network, save_checkpoint
from cxr_model.classifier import probabilities_from_logits
from cxr_model.labels import LabelSet
from cxr_model.network import CXRNet
from training.augment import build_augmentation
from training.config import StageConfig, TrainConfig
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


@dataclass
class StageNet:
    """The network as one stage trains it.

    ``model`` is the plain network (validation and checkpoints use it); ``trainable`` is the
    DDP-prepared part that learns: the head in stage 1, everything in stage 2. In stage 1
    ``backbone`` is a frozen feature extractor run under ``no_grad``, so no autograd graph is kept
    for it and DDP synchronises no gradients for it.
    """

    model: CXRNet
    trainable: nn.Module
    backbone: nn.Module | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:
            return self.trainable(x)
        with torch.no_grad():
            features = self.backbone(x)
        return self.trainable(features)


@dataclass
class StageRun:
    """Everything one worker holds for a stage: built by ``setup_stage``, used by every epoch."""

    cfg: TrainConfig
    stage: str
    rank: int
    world: int
    device: torch.device
    root: Path
    card: ModelCard
    net: StageNet
    train_set: ManifestDataset
    val_entries: list[dict]
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: dict  # epoch, best_score, stale, history: what a resumed run continues from

    @property
    def stage_cfg(self) -> StageConfig:
        return getattr(self.cfg, self.stage)


def restore_state(model: CXRNet, stage: str, rank: int) -> tuple[dict, dict | None]:
    """The early-stopping state, plus the saved train state when Ray Train resumes this stage.

    After an interruption ``ray.train.get_checkpoint()`` returns the last epoch's checkpoint: its
    weights go into ``model`` now; the optimiser and scheduler state is returned for loading once
    they are built.
    """
    resume = ray.train.get_checkpoint()
    if resume is None:
        return {"epoch": 0, "best_score": -1.0, "stale": 0, "history": []}, None
    with resume.as_directory() as directory:
        model.load_state_dict(torch.load(Path(directory) / WEIGHTS_FILE, map_location="cpu"))
        saved = torch.load(Path(directory) / TRAIN_STATE_FILE, map_location="cpu")
    state = saved["state"]
    if rank == 0:
        log.info(f"[{stage}] resuming after epoch {state['epoch']} (best val macro-F1 {state['best_score']:.4f})")
    return state, saved


def place_network(model: CXRNet, device: torch.device, frozen: bool) -> StageNet:
    """Move the network to the device and wrap the part that trains for distributed training."""
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if not frozen:
        return StageNet(model, ray.train.torch.prepare_model(model))
    model.backbone.requires_grad_(False)
    # eval(): BatchNorm keeps the pretrained statistics while the head learns on top of them.
    backbone = model.backbone.to(device).eval()
    head = ray.train.torch.prepare_model(model.head)
    return StageNet(model.to(device), head, backbone)


def build_optimizer(model: CXRNet, stage_cfg: StageConfig, saved: dict | None):
    """AdamW over the trainable parameters and a cosine schedule, restored when resuming."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage_cfg.lr, weight_decay=stage_cfg.weight_decay)
    # One cosine cycle over the planned epochs; early stopping may end the stage sooner.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(stage_cfg.epochs, 1))
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    return optimizer, scheduler


def build_criterion(
    cfg: TrainConfig, label_set: LabelSet, train_entries: list[dict], device: torch.device
) -> nn.Module:
    # Weights come from the training split only: validation must not shape the loss.
    weights = class_weights(train_entries, label_set) if cfg.class_weighting else None
    return build_loss(cfg.loss, label_set, weights, cfg.focal_gamma, cfg.label_smoothing).to(device)


def setup_stage(loop_config: dict) -> StageRun:
    """Build, or after an interruption restore, everything a worker needs for one stage."""
    cfg = TrainConfig.from_dict(loop_config["train_config"])
    stage = loop_config["stage"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # Seeded before the network is built: its random init and the loaders' seeds draw from here.
    torch.manual_seed(cfg.seed + 1000 * rank)

    manifest = load_manifest(loop_config["manifest_path"])
    root = Path(manifest["root"])
    model, card = load_network(loop_config["init_checkpoint"])
    train_entries, val_entries = split_entries(manifest, "train"), split_entries(manifest, "val")
    state, saved = restore_state(model, stage, rank)
    net = place_network(model, device, frozen=stage == "stage1")
    optimizer, scheduler = build_optimizer(model, getattr(cfg, stage), saved)
    loss_fn = build_criterion(cfg, card.label_set, train_entries, device)
    train_set = ManifestDataset(
        root,
        train_entries,
        card.label_set,
        card.preprocess_spec,
        build_augmentation(cfg.hflip) if cfg.augment else None,
    )
    return StageRun(
        cfg, stage, rank, world, device, root, card, net, train_set, val_entries, loss_fn, optimizer, scheduler, state
    )


def _train_loader(run: StageRun, epoch: int) -> DataLoader:
    cfg = run.cfg
    if run.world > 1:
        sampler = DistributedSampler(run.train_set, run.world, run.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    else:
        # A seeded order per epoch, so a resumed run sees the same batches it would have seen.
        sampler = RandomSampler(run.train_set, generator=torch.Generator().manual_seed(cfg.seed + epoch))
    return DataLoader(
        run.train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.loader_workers,
        pin_memory=run.device.type == "cuda",
        persistent_workers=False,
    )


def _train_step(run: StageRun, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
    if run.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with _autocast(run.device):
        logits = run.net(x)
    loss = run.loss_fn(logits.float(), y)  # the loss in fp32, whatever autocast ran the network in
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss


def train_one_epoch(run: StageRun, epoch: int) -> tuple[float, float]:
    """One pass over this worker's shard; returns the all-worker mean loss and images per second."""
    loader = _train_loader(run, epoch)
    run.net.trainable.train()
    started, seen, loss_sum = time.perf_counter(), 0, 0.0
    bar = tqdm(
        loader,
        desc=f"{run.stage} epoch {epoch + 1}/{run.stage_cfg.epochs}",
        mininterval=10,
        disable=run.rank != 0 or not run.cfg.progress,
        leave=False,
    )
    for x, y in bar:
        loss = _train_step(run, x, y)
        seen += len(y)
        loss_sum += float(loss.detach()) * len(y)
    run.scheduler.step()
    elapsed = time.perf_counter() - started
    totals = _gather((loss_sum, seen, elapsed), run.world)
    train_loss = sum(t[0] for t in totals) / max(sum(t[1] for t in totals), 1)
    # All workers' images over the slowest worker's time: the epoch lasts until it finishes.
    images_per_s = sum(t[1] for t in totals) / max(max(t[2] for t in totals), 1e-9)
    return train_loss, images_per_s


@torch.no_grad()
def _predict_shard(run: StageRun) -> tuple[np.ndarray | None, np.ndarray | None, float]:
    """This worker's share of the validation split: (probabilities, targets, summed loss)."""
    card = run.card
    loader = DataLoader(
        ManifestDataset(run.root, run.val_entries[run.rank :: run.world], card.label_set, card.preprocess_spec),
        batch_size=run.cfg.eval_batch_size,
        num_workers=min(run.cfg.loader_workers, 2),
    )
    run.net.model.eval()
    probs, targets, loss_sum = [], [], 0.0
    for x, y in loader:
        x, y = x.to(run.device), y.to(run.device)
        with _autocast(run.device):
            logits = run.net.model(x).float()
        loss_sum += float(run.loss_fn(logits, y)) * len(y)
        probs.append(probabilities_from_logits(logits, card.task).cpu().numpy())
        targets.append(y.cpu().numpy())
    return np.concatenate(probs) if probs else None, np.concatenate(targets) if targets else None, loss_sum


def evaluate(run: StageRun) -> tuple[dict, float]:
    """Validation metrics and mean loss over the whole split, sharded across workers and gathered."""
    parts = [p for p in _gather(_predict_shard(run), run.world) if p[0] is not None]
    all_probs = np.concatenate([p[0] for p in parts])
    all_targets = np.concatenate([p[1] for p in parts])
    metrics = classification_metrics(all_targets, all_probs, run.card.label_set)
    return metrics, sum(p[2] for p in parts) / max(len(all_targets), 1)


def record_epoch(
    run: StageRun, epoch: int, train_loss: float, images_per_s: float, val: dict, val_loss: float
) -> tuple[dict, bool]:
    """Advance the early-stopping state and history; the epoch's row and whether it is the best."""
    state, score = run.state, val["macro_f1"]
    improved = score > state["best_score"] + 1e-9
    state["best_score"] = max(score, state["best_score"])
    state["stale"] = 0 if improved else state["stale"] + 1
    state["epoch"] = epoch + 1
    row = {
        "stage": run.stage,
        "epoch": epoch + 1,
        "world_size": run.world,
        "torch_threads": torch.get_num_threads(),  # the worker's CPUs: cpus_per_worker, or shared equally
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_accuracy": val["accuracy"],
        "val_macro_f1": score,
        "val_macro_roc_auc": val["macro_roc_auc"],
        "val_ece": val["ece"],
        "lr": run.scheduler.get_last_lr()[0],
        "train_images_per_s": images_per_s,
    }
    state["history"].append(row)
    return row, improved


def progress_bar(done: int, total: int, width: int = 16) -> str:
    filled = round(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _log_epoch(run: StageRun, row: dict, improved: bool) -> None:
    if run.rank != 0:
        return
    auc = "n/a" if row["val_macro_roc_auc"] is None else f"{row['val_macro_roc_auc']:.3f}"
    epochs = run.stage_cfg.epochs
    log.info(
        f"[{run.stage}] {progress_bar(row['epoch'], epochs)} epoch {row['epoch']}/{epochs} "
        f"train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.3f} "
        f"val_macro_f1 {row['val_macro_f1']:.3f} val_auc {auc} {row['train_images_per_s']:.1f} img/s"
        f"{' *best*' if improved else ''}"
    )


def quiet_ray_train_reports() -> None:
    """Ray Train logs two INFO lines per epoch on every worker ("Reporting training result ...",
    "Checkpoint successfully created at ..."), full of object reprs, which bury the epoch lines above.
    Warnings and errors still show."""
    from ray.train.v2._internal.execution import context, storage

    # context.py names its logger after its file path, so it is not under the "ray.train" hierarchy.
    for name in (context.__file__, storage.__name__, "ray.train._internal.storage", "ray.train.v2.torch"):
        logging.getLogger(name).setLevel(logging.WARNING)


def report_epoch(run: StageRun, row: dict, val: dict) -> None:
    """Report the epoch's metrics; rank 0 attaches a checkpoint that can resume the stage."""
    metrics = {k: v for k, v in row.items() if v is not None}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if run.rank == 0:
            card = run.card
            card.metrics = {**card.metrics, run.stage: {**row, "val": val}}
            card.created_at = ""  # each epoch's checkpoint is stamped when it is written
            save_checkpoint(run.net.model, card, tmp)
            torch.save(
                {"state": run.state, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict()},
                Path(tmp) / TRAIN_STATE_FILE,
            )
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        # Every worker reports (Ray Train requires it); only rank 0's checkpoint is kept.
        ray.train.report(metrics, checkpoint=checkpoint)


def train_stage_loop(loop_config: dict) -> None:
    """Ray Train's per-worker entry point: train one stage, resuming where an interruption left it."""
    quiet_ray_train_reports()
    run = setup_stage(loop_config)
    for epoch in range(run.state["epoch"], run.stage_cfg.epochs):
        train_loss, images_per_s = train_one_epoch(run, epoch)
        val, val_loss = evaluate(run)
        row, improved = record_epoch(run, epoch, train_loss, images_per_s, val, val_loss)
        _log_epoch(run, row, improved)
        report_epoch(run, row, val)
        if run.state["stale"] >= run.stage_cfg.patience:
            if run.rank == 0:
                log.info(f"[{run.stage}] early stop: no better val macro-F1 for {run.stage_cfg.patience} epochs")
            break
