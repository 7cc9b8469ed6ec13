"""Training inputs come from the same preprocessing as evaluation and serving, bit for bit."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_model.labels import COVID4, LabelSet
from cxr_model.preprocessing import PreprocessSpec, normalize, preprocess
from serve.classifier import stack_inputs
from serve.inputs import decode_upload, model_levels
from training.data import FocalLoss, ManifestDataset, build_augmentation, class_weights
from training.datasets import scan_dataset

SPEC = PreprocessSpec(input_size=64)
LABELS = LabelSet("multiclass", COVID4)


def test_every_path_produces_the_same_model_input(demo_data):
    dataset = scan_dataset(demo_data)
    entries = [{"path": s.path, "labels": list(s.labels)} for s in dataset.samples[:12]]
    training_eval = ManifestDataset(dataset.root, entries, LABELS, SPEC)  # also what evaluation uses
    for index, entry in enumerate(entries):
        data = (dataset.root / entry["path"]).read_bytes()
        reference = preprocess(data, SPEC)
        x, y = training_eval[index]
        assert torch.equal(x, reference)
        assert LABELS.names[int(y)] == entry["labels"][0]
        # Serving: Ingress decodes and resizes, BatchedClassifier stacks and normalises.
        levels = model_levels(decode_upload(data, SPEC.max_pixels), SPEC)
        assert levels.dtype == np.uint8  # 8-bit sources cross to the classifier as bytes
        served = stack_inputs([levels], SPEC)[0]
        assert torch.equal(served, reference)


def test_a_served_batch_mixing_8_and_16_bit_images_matches_preprocess(tmp_path):
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (80, 90), dtype=np.uint8)
    sixteen = rng.integers(0, 65536, (70, 75), dtype=np.uint16)
    files = []
    for array in (eight, sixteen):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    levels = [model_levels(decode_upload(data, SPEC.max_pixels), SPEC) for data in files]
    assert [lv.dtype for lv in levels] == [np.uint8, np.float32]
    batch = stack_inputs(levels, SPEC)
    for served, data in zip(batch, files):
        assert torch.equal(served, preprocess(data, SPEC))


def test_augmentation_changes_pixels_not_shape_or_range(demo_data):
    dataset = scan_dataset(demo_data)
    entries = [{"path": dataset.samples[0].path, "labels": list(dataset.samples[0].labels)}]
    plain = ManifestDataset(dataset.root, entries, LABELS, SPEC)[0][0]
    torch.manual_seed(0)
    augmented = ManifestDataset(dataset.root, entries, LABELS, SPEC, build_augmentation())[0][0]
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    low, high = normalize(torch.zeros(1, 1, 1), SPEC), normalize(torch.ones(1, 1, 1), SPEC)
    assert (augmented >= low - 1e-6).all() and (augmented <= high + 1e-6).all()


def test_class_weights_counter_imbalance():
    entries = [{"labels": ["Normal"]}] * 6 + [{"labels": ["COVID-19"]}] * 2 + \
              [{"labels": ["Lung Opacity"]}] * 2 + [{"labels": ["Viral Pneumonia"]}] * 2
    weights = class_weights(entries, LABELS)
    assert weights.mean().item() == pytest.approx(1.0)
    # COVID-19 is 3x rarer than Normal, so it weighs 3x as much.
    assert weights[0].item() == pytest.approx(3 * weights[COVID4.index("Normal")].item())


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    focal = FocalLoss("multiclass", gamma=0.0)(logits, target)
    torch.testing.assert_close(focal, torch.nn.functional.cross_entropy(logits, target))
    assert FocalLoss("multiclass", gamma=2.0)(logits, target) < focal
