"""The loop closed: radiologist-reviewed records, exported by ``cxr export-reviewed``, train a model
through the real pipeline (Ray Train), with the radiologists' labels, not the model's."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from cxr_model.checkpoint import read_card
from cxr_model.labels import COVID4
from serve.export_reviewed import export_reviewed
from serve.records import PredictionRecords
from serve.reviews import Reviews
from tests.serve.helpers import MODEL, stored_record
from tests.training.test_train import small_config
from training.config import StageConfig
from training.pipeline import run_training
from training.splits import load_manifest
from training.synthetic import render_chest

PER_CLASS = 24


def png_of(label: str, seed: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((render_chest(label, np.random.default_rng(seed)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_training_on_an_export_of_reviewed_records_learns_the_radiologists_labels(ray_cluster, mongo_server, tmp_path):
    records = PredictionRecords(mongo_server.uri, f"loop_{uuid.uuid4().hex[:8]}")
    reviews = Reviews(records.db)
    model = MODEL | {"labels": list(COVID4), "task": "softmax"}
    truth = {}
    for i in range(PER_CLASS * len(COVID4)):
        label = COVID4[i % len(COVID4)]
        said = COVID4[(i + 1) % len(COVID4)] if i % 3 == 0 else label  # the model was wrong on a third
        probabilities = {name: (0.7 if name == said else 0.1) for name in COVID4}
        record = stored_record(
            patient_id=f"LOOP-{i:04d}",
            top_label=said,
            confidence=0.7,
            probabilities=probabilities,
            positives=[said],
            model=model,
        )
        saved = records.save(record, {"original": png_of(label, 5000 + i)})
        verdict = "agree" if said == label else "disagree"
        reviews.add(records.get(saved.prediction_id), verdict, [label], "", "dr-lee")
        truth[saved.prediction_id] = label

    out = tmp_path / "reviewed"
    assert export_reviewed(records.db, out, None, 50_000_000).written == len(truth)
    config = small_config(
        out,
        tmp_path / "run",
        stage1=StageConfig(epochs=1, lr=3e-3, patience=5),
        stage2=StageConfig(epochs=2, lr=1e-3, patience=5),
    )
    final = run_training(config)

    manifest = load_manifest(tmp_path / "run" / "split_manifest.json")
    trained_on = {Path(e["path"]).stem: e["labels"] for e in manifest["entries"]}
    assert trained_on == {pid: [label] for pid, label in truth.items()}  # every image, the radiologist's label
    card = read_card(final)
    assert list(card.labels) == list(COVID4) and card.data_manifest_sha256 == manifest["sha256"]
