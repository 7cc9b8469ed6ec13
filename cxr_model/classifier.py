"""Inference wrapper: a network, its card and a device, with ``predict_batch``.

``load_checkpoint`` lives here, not in ``checkpoint``: it builds a ``Classifier``, and the
checkpoint format must not depend on the inference wrapper that depends on it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from cxr_model.checkpoint import ModelCard, load_network
from cxr_model.labels import MULTICLASS
from cxr_model.network import CXRNet


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is taken literally."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return device


def probabilities_from_logits(logits: torch.Tensor, task: str, temperature: float = 1.0) -> torch.Tensor:
    """Softmax for single-label tasks, independent sigmoids for multi-label ones, of logits / T."""
    logits = logits.float() / float(temperature)
    return torch.softmax(logits, dim=1) if task == MULTICLASS else torch.sigmoid(logits)


# A multi-label probability this close to its threshold is a coin toss.
MULTILABEL_MARGIN = 0.1


def low_confidence(probabilities, card: ModelCard) -> bool:
    """True when a clinician should not lean on this prediction (shown and stored as such)."""
    row = np.asarray(probabilities, dtype=np.float64)
    if card.task == MULTICLASS:
        return bool(row.max() < card.low_confidence_below)
    thresholds = np.asarray(card.thresholds or [0.5] * len(row), dtype=np.float64)
    return bool((np.abs(row - thresholds) < MULTILABEL_MARGIN).any())


def positive_labels(probabilities: np.ndarray, card: ModelCard) -> list[list[str]]:
    """Labels called positive per row: the argmax for multiclass, per-label thresholds for multilabel."""
    if card.task == MULTICLASS:
        return [[card.labels[int(np.argmax(row))]] for row in probabilities]
    thresholds = np.asarray(card.thresholds, dtype=np.float32)
    return [[name for name, hit in zip(card.labels, row >= thresholds) if hit] for row in probabilities]


class Classifier:
    """A loaded model ready for batched inference.

    On CUDA it runs channels_last with bf16 autocast (the GPU-only fast path);
    on CPU it runs fp32, channels_last when asked (faster for DenseNet on x86).
    """

    def __init__(
        self,
        model: CXRNet,
        card: ModelCard,
        device: str = "auto",
        channels_last: bool | None = None,
        bf16: bool | None = None,
        compile: bool = False,
    ):
        self.device = resolve_device(device)
        self.card = card
        self.labels = list(card.labels)
        self.task = card.task
        on_cuda = self.device.type == "cuda"
        self.channels_last = on_cuda if channels_last is None else channels_last
        self.bf16 = on_cuda if bf16 is None else (bf16 and on_cuda)
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for param in self.model.parameters():
            param.requires_grad_(False)
        # Optional: worth it on GPU for long-lived replicas; the first batch pays the compile time.
        self.forward = torch.compile(self.model, dynamic=True) if compile else self.model

    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _as_batch(self, tensors) -> torch.Tensor:
        batch = torch.stack(list(tensors)) if not isinstance(tensors, torch.Tensor) else tensors
        if batch.dim() == 3:
            batch = batch.unsqueeze(0)
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    @torch.inference_mode()
    def predict_logits(self, tensors) -> torch.Tensor:
        with self._autocast():
            return self.forward(self._as_batch(tensors)).float().cpu()

    @torch.inference_mode()
    def logits_and_features(self, tensors) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            logits, features = self.model.forward_with_features(self._as_batch(tensors))
        return logits.float().cpu(), features.float().cpu()

    def predict_with_features(self, tensors) -> tuple[np.ndarray, np.ndarray]:
        """``predict_batch`` plus the pooled features, for the out-of-scope gate."""
        logits, features = self.logits_and_features(tensors)
        probs = probabilities_from_logits(logits, self.task, self.card.calibration_temperature)
        return probs.numpy(), features.numpy()

    def predict_batch(self, tensors) -> np.ndarray:
        """[N, 3, S, S] preprocessed inputs (or a list of [3, S, S]) -> [N, labels] probabilities."""
        return probabilities_from_logits(
            self.predict_logits(tensors), self.task, self.card.calibration_temperature
        ).numpy()

    def positives(self, probabilities: np.ndarray) -> list[list[str]]:
        return positive_labels(probabilities, self.card)


def load_checkpoint(directory: str | Path, device: str = "auto", **options) -> Classifier:
    """A ready ``Classifier`` for a checkpoint directory (weights verified against the card)."""
    model, card = load_network(directory)
    return Classifier(model, card, device=device, **options)
