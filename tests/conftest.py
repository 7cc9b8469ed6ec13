"""Shared fixtures: generated data, small checkpoints, one real Ray instance per session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import hypothesis
import numpy as np
import pytest
import torch
from PIL import Image

# Tests run a throw-away local cluster; Ray 2.60 turns token auth on for new clusters.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

from cxr_model.checkpoint import ModelCard, save_checkpoint, sha256_file  # noqa: E402
from cxr_model.classifier import Classifier  # noqa: E402
from cxr_model.labels import COVID4  # noqa: E402
from cxr_model.network import build_model  # noqa: E402
from cxr_model.preprocessing import levels_to_unit, normalize, resize_levels  # noqa: E402
from cxr_model.scope import GATE_FILE, fit_feature_gate  # noqa: E402
from tests.helpers import IN_CI, make_card, skip_or_fail_in_ci  # noqa: E402
from training.synthetic import make_demo_dataset, render_chest  # noqa: E402

# Hypothesis: derandomised in CI (a failure there reproduces exactly); random locally, to keep finding new cases.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis.settings.load_profile("ci" if IN_CI else "default")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


METRICS_PORT = _free_port()


@pytest.fixture(scope="session")
def ray_cluster():
    """The one real Ray instance for the whole session (2 CPUs, as on CI)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh cluster, never one a developer left running. Metrics are
        # exported every 2 s (10 s by default) so that tests counting them settle quickly.
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _metrics_export_port=METRICS_PORT,
            _system_config={"metrics_report_interval_ms": 2000},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_metrics_url(ray_cluster) -> str:
    return f"http://127.0.0.1:{METRICS_PORT}/metrics"


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """50 synthetic images per class in the Kaggle layout, with 2 duplicates per class."""
    root = tmp_path_factory.mktemp("demo-data") / "COVID-19_Radiography_Dataset"
    make_demo_dataset(root, per_class=50, seed=0, duplicates=2)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init densenet121 checkpoint at 64 px: fast to load, real format."""
    torch.manual_seed(0)
    model = build_model("densenet121", len(COVID4), "none")
    directory = tmp_path_factory.mktemp("tiny-checkpoint")
    card = save_checkpoint(model, make_card(), directory)
    add_feature_gate(model, card, directory)
    return directory


def chest_image_features(classifier: Classifier, seeds) -> np.ndarray:
    spec = classifier.card.preprocess_spec
    labels = sorted(COVID4)
    tensors = [
        normalize(
            torch.from_numpy(
                levels_to_unit(
                    resize_levels(
                        Image.fromarray(
                            (render_chest(labels[seed % 4], np.random.default_rng(seed)) * 255).astype(np.uint8)
                        ),
                        spec.input_size,
                    )
                )
            )[None],
            spec,
        )
        for seed in seeds
    ]
    return classifier.predict_with_features(torch.stack(tensors))[1]


def add_feature_gate(model, card: ModelCard, directory: Path, margin: float = 1.5) -> None:
    """Fit an out-of-scope feature gate on generated chest images, as training does on its splits.

    Seeds 5000+ are kept out of every test's images. The threshold gets a margin over the largest
    validation distance, so that every chest-like picture the tests upload passes the gate
    while other pictures (photos, limbs, skulls: distances 3-5x larger here) do not.
    """
    classifier = Classifier(model, card, device="cpu")
    gate = fit_feature_gate(
        chest_image_features(classifier, range(5000, 5080)), chest_image_features(classifier, range(5100, 5140)), 0.01
    )
    gate.threshold = margin * float(gate.distances(chest_image_features(classifier, range(5100, 5140))).max())
    gate.save(directory / GATE_FILE)
    card.scope = {
        "version": "test",
        "image_limits": {},
        "feature_gate": {
            "file": GATE_FILE,
            "sha256": sha256_file(directory / GATE_FILE),
            "threshold": gate.threshold,
            "target_false_rejection": 0.01,
            "feature_dim": int(gate.mean.shape[0]),
            "fitted_on": "80 generated chest images",
            "threshold_from": "40 generated chest images",
        },
    }
    save_checkpoint(model, card, directory)


REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-real-sample"


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The 1,000 real radiographs of ../shared (Kaggle layout); a user's own clone skips, CI fails."""
    if not REAL_SAMPLE.is_dir():
        skip_or_fail_in_ci("../shared/data/cxr-real-sample is not here (a user's own clone); CI provides it")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def real_trained_run(ray_cluster, real_sample, tmp_path_factory) -> Path:
    """`cxr train`'s pipeline on the real sample: DenseNet-121 from random init at 64 px, 1 + 4 epochs
    (about 2 minutes on 2 cores). Returns the run directory (checkpoint/, split_manifest.json, ...)."""
    from training.config import StageConfig, TrainConfig
    from training.pipeline import run_training

    out = tmp_path_factory.mktemp("real-run")
    config = TrainConfig(
        data_dir=str(real_sample),
        output_dir=str(out),
        backbone="densenet121",
        weights="none",
        image_size=64,
        batch_size=32,
        eval_batch_size=64,
        loader_workers=0,
        stage1=StageConfig(epochs=1, lr=3e-3, patience=5),
        stage2=StageConfig(epochs=4, lr=1e-3, patience=8),
        model_version="real-sample-test",
        progress=False,
    )
    run_training(config)
    return out
