"""Training inputs come from the same preprocessing as evaluation and serving, bit for bit."""

import io

import numpy as np
import torch
from PIL import Image

from cxr_model.engine import stack_levels
from cxr_model.labels import COVID4, LabelSet
from cxr_model.preprocessing import PreprocessSpec, preprocess
from serve.inputs import decode_upload, model_levels
from training.dataset import ManifestDataset
from training.layouts import scan_dataset

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
        served = stack_levels([levels], SPEC)[0]
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
    batch = stack_levels(levels, SPEC)
    for served, data in zip(batch, files):
        assert torch.equal(served, preprocess(data, SPEC))
