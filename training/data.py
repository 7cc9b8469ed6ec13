"""Torch datasets over manifest entries, augmentation, and imbalance-aware losses."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from cxr_model.labels import MULTICLASS, LabelSet
from cxr_model.preprocessing import PreprocessSpec, decode_grayscale, normalize


def build_augmentation(hflip: bool = True) -> v2.Compose:
    """Mild, radiograph-plausible changes on [1, S, S] grey levels in [0, 1]."""
    steps = [v2.RandomHorizontalFlip(0.5)] if hflip else []
    steps += [
        v2.RandomAffine(degrees=7, translate=(0.05, 0.05), scale=(0.93, 1.07)),
        v2.ColorJitter(brightness=0.15, contrast=0.15),
    ]
    return v2.Compose(steps)


def encode_target(labels: list[str], label_set: LabelSet) -> torch.Tensor:
    if label_set.task == MULTICLASS:
        return torch.tensor(label_set.names.index(labels[0]), dtype=torch.long)
    target = torch.zeros(len(label_set), dtype=torch.float32)
    for name in labels:
        target[label_set.names.index(name)] = 1.0
    return target


class ManifestDataset(torch.utils.data.Dataset):
    """Images listed in a split manifest, decoded by the shared preprocessing path."""

    def __init__(self, root: str | Path, entries: list[dict], label_set: LabelSet,
                 spec: PreprocessSpec, augment: nn.Module | None = None):
        self.root = Path(root)
        self.entries = entries
        self.label_set = label_set
        self.spec = spec
        self.augment = augment

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        entry = self.entries[index]
        gray = decode_grayscale((self.root / entry["path"]).read_bytes(), self.spec)
        if self.augment is not None:
            gray = self.augment(gray).clamp_(0.0, 1.0)
        return normalize(gray, self.spec), encode_target(entry["labels"], self.label_set)


def class_weights(entries: list[dict], label_set: LabelSet) -> torch.Tensor:
    """Multiclass: inverse frequency, mean 1. Multilabel: BCE pos_weight = negatives/positives."""
    n = len(entries)
    counts = torch.tensor(
        [sum(name in e["labels"] for e in entries) for name in label_set.names], dtype=torch.float32
    ).clamp(min=1.0)
    if label_set.task == MULTICLASS:
        weights = n / (len(label_set) * counts)
        return weights / weights.mean()
    return ((n - counts).clamp(min=1.0) / counts).clamp(max=100.0)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017), optionally class-weighted; softmax or sigmoid."""

    def __init__(self, task: str, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.task = task
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task == MULTICLASS:
            log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
            loss = -((1 - log_p.exp()) ** self.gamma) * log_p
            if self.weight is not None:
                loss = loss * self.weight[target]
            return loss.mean()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=self.weight)
        p_t = torch.exp(-F.binary_cross_entropy_with_logits(logits, target, reduction="none"))
        return (((1 - p_t) ** self.gamma) * bce).mean()


def build_loss(kind: str, label_set: LabelSet, weights: torch.Tensor | None,
               gamma: float = 2.0, label_smoothing: float = 0.0) -> nn.Module:
    if kind == "focal":
        return FocalLoss(label_set.task, gamma, weights)
    if label_set.task == MULTICLASS:
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
    return nn.BCEWithLogitsLoss(pos_weight=weights)
