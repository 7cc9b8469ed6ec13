"""Training-time augmentation, applied between decoding and normalisation (see ManifestDataset)."""

from __future__ import annotations

from torchvision.transforms import v2


def build_augmentation(hflip: bool = True) -> v2.Compose:
    """Mild, radiograph-plausible changes on [1, S, S] grey levels in [0, 1]."""
    steps = [v2.RandomHorizontalFlip(0.5)] if hflip else []
    steps += [
        v2.RandomAffine(degrees=7, translate=(0.05, 0.05), scale=(0.93, 1.07)),
        v2.ColorJitter(brightness=0.15, contrast=0.15),
    ]
    return v2.Compose(steps)
