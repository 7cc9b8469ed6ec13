"""Shared fixtures: generated data, small checkpoints, one real Ray instance per session."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis
import numpy as np
import pytest
import torch
from PIL import Image

# Tests run a throw-away local cluster; Ray 2.60 turns token auth on for new clusters.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

from cxr_model.checkpoint import ModelCard, save_checkpoint, sha256_file, write_card  # noqa: E402
from cxr_model.classifier import Classifier  # noqa: E402
from cxr_model.labels import COVID4  # noqa: E402
from cxr_model.network import build_model  # noqa: E402
from cxr_model.preprocessing import levels_to_unit, normalize, resize_levels  # noqa: E402
from cxr_model.scope import GATE_FILE, LAYOUT_FILE, fit_feature_gate, fit_layout_gate  # noqa: E402
from tests.helpers import IN_CI, MongoServer, free_port, make_card, skip_or_fail_in_ci  # noqa: E402
from training.synthetic import make_demo_dataset, render_chest  # noqa: E402

# Hypothesis: derandomised in CI (a failure there reproduces exactly); random locally, to keep finding new cases.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis.settings.load_profile("ci" if IN_CI else "default")


METRICS_PORT = free_port()


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
    add_layout_gate(card, directory)
    return directory


def chest_levels(seeds, size: int) -> list[np.ndarray]:
    """Model-size grey levels [1, S, S] of generated chest images."""
    labels = sorted(COVID4)
    return [
        resize_levels(
            Image.fromarray((render_chest(labels[seed % 4], np.random.default_rng(seed)) * 255).astype(np.uint8)), size
        )[None]
        for seed in seeds
    ]


def chest_image_features(classifier: Classifier, seeds) -> np.ndarray:
    spec = classifier.card.preprocess_spec
    tensors = [
        normalize(torch.from_numpy(levels_to_unit(levels)), spec) for levels in chest_levels(seeds, spec.input_size)
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


def add_layout_gate(card: ModelCard, directory: Path, margin: float = 1.5) -> None:
    """The layout gate fitted on the same generated chest images (seeds 5000+), with the same margin."""
    size = card.preprocess_spec.input_size
    validation = chest_levels(range(5100, 5140), size)
    gate = fit_layout_gate(chest_levels(range(5000, 5080), size), validation, 0.01)
    gate.threshold = margin * float(gate.level_distances(validation).max())
    gate.save(directory / LAYOUT_FILE)
    record = {"file": LAYOUT_FILE, "sha256": sha256_file(directory / LAYOUT_FILE), "threshold": gate.threshold}
    card.scope = (card.scope or {}) | {"layout_gate": record | {"feature_dim": int(gate.mean.shape[0])}}
    write_card(card, directory)


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


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    server = MongoServer(tmp_path_factory.mktemp("secantus") / "db")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def real_gated_checkpoint(tiny_checkpoint, real_sample, tmp_path_factory) -> Path:
    """The tiny random-init model with both gates fitted on real radiographs (every 5th file of the
    sample: the even ones fit, the odd ones set the threshold, 10% above their largest distance): it
    accepts real images, so pages and API can be driven with them without training, and still
    refuses a real photograph. Its labels mean nothing; what it shows is how real pictures render."""
    import shutil

    from cxr_model.checkpoint import load_network
    from cxr_model.preprocessing import open_image

    directory = tmp_path_factory.mktemp("real-gated") / "checkpoint"
    shutil.copytree(tiny_checkpoint, directory)
    model, card = load_network(directory)
    size = card.preprocess_spec.input_size
    files = sorted(real_sample.glob("*/images/*.png"))[::5]
    levels = [resize_levels(open_image(p.read_bytes(), 10**8), size)[None] for p in files]
    classifier = Classifier(model, card, device="cpu")
    features = classifier.predict_with_features(
        torch.stack([normalize(torch.from_numpy(levels_to_unit(g)), card.preprocess_spec) for g in levels])
    )[1]
    gates = {
        GATE_FILE: (fit_feature_gate(features[::2], features[1::2]), features[1::2], "distances"),
        LAYOUT_FILE: (fit_layout_gate(levels[::2], levels[1::2]), levels[1::2], "level_distances"),
    }
    card.version = "0.0.1-real-gates"
    for (file, (gate, validation, measure)), key in zip(gates.items(), ("feature_gate", "layout_gate")):
        gate.threshold = 1.1 * float(getattr(gate, measure)(validation).max())
        gate.save(directory / file)
        card.scope[key] |= {"file": file, "sha256": sha256_file(directory / file), "threshold": gate.threshold}
    write_card(card, directory)
    return directory
