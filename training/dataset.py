"""The torch Dataset over split-manifest entries: decoded by the shared preprocessing path."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxr_model.labels import MULTICLASS, LabelSet
from cxr_model.preprocessing import PreprocessSpec, decode_grayscale, normalize


def encode_target(labels: list[str], label_set: LabelSet) -> torch.Tensor:
    if label_set.task == MULTICLASS:
        return torch.tensor(label_set.names.index(labels[0]), dtype=torch.long)
    target = torch.zeros(len(label_set), dtype=torch.float32)
    for name in labels:
        target[label_set.names.index(name)] = 1.0
    return target


class ManifestDataset(torch.utils.data.Dataset):
    """Images listed in a split manifest, decoded by the shared preprocessing path."""

    def __init__(
        self,
        root: str | Path,
        entries: list[dict],
        label_set: LabelSet,
        spec: PreprocessSpec,
        augment: nn.Module | None = None,
    ):
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
