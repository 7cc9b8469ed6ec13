"""Augmentation keeps the model input's shape and value range."""

import torch

from cxr_model.labels import COVID4, LabelSet
from cxr_model.preprocessing import PreprocessSpec, normalize
from training.augment import build_augmentation
from training.dataset import ManifestDataset
from training.layouts import scan_dataset

SPEC = PreprocessSpec(input_size=64)
LABELS = LabelSet("multiclass", COVID4)


def test_augmentation_changes_pixels_not_shape_or_range(demo_data):
    dataset = scan_dataset(demo_data)
    entries = [{"path": dataset.samples[0].path, "labels": list(dataset.samples[0].labels)}]
    plain = ManifestDataset(dataset.root, entries, LABELS, SPEC)[0][0]
    torch.manual_seed(0)
    augmented = ManifestDataset(dataset.root, entries, LABELS, SPEC, build_augmentation())[0][0]
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    low, high = normalize(torch.zeros(1, 1, 1), SPEC), normalize(torch.ones(1, 1, 1), SPEC)
    assert (augmented >= low - 1e-6).all() and (augmented <= high + 1e-6).all()
