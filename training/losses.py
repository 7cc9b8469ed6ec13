"""Imbalance-aware losses: class-weighted cross-entropy / BCE, and focal loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxr_model.labels import MULTICLASS, LabelSet


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


def build_loss(
    kind: str, label_set: LabelSet, weights: torch.Tensor | None, gamma: float = 2.0, label_smoothing: float = 0.0
) -> nn.Module:
    if kind == "focal":
        return FocalLoss(label_set.task, gamma, weights)
    if label_set.task == MULTICLASS:
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
    return nn.BCEWithLogitsLoss(pos_weight=weights)
