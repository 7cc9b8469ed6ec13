"""Both stages end to end through Ray Train on the session's real Ray instance."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from cxr_model.checkpoint import read_card
from tests.helpers import REPORT_FILES
from training.config import StageConfig, TrainConfig
from training.pipeline import run_training
from training.splits import load_manifest
from training.synthetic import make_demo_dataset

# Chance on four balanced classes is 0.25. The held-out test split has 20 distinct
# images (plus duplicates); P(>= 12 of 20 correct | p = 0.25) < 0.001, so 0.6 means
# the model learned the classes' structure, while leaving room for seed-to-seed noise
# (the same recipe reaches 0.85-1.0 here).
LEARNED_ACCURACY = 0.6


def small_config(data, out, **overrides) -> TrainConfig:
    base = dict(
        data_dir=str(data),
        output_dir=str(out),
        backbone="densenet121",
        weights="none",
        image_size=64,
        batch_size=16,
        eval_batch_size=64,
        loader_workers=0,
        workers=1,
        stage1=StageConfig(epochs=2, lr=3e-3, patience=5),
        stage2=StageConfig(epochs=8, lr=1e-3, patience=8),
        model_version="test",
        progress=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def weights(directory) -> dict[str, torch.Tensor]:
    return torch.load(directory / "weights.pt", map_location="cpu")


def split_state(state):
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    head = {k: v for k, v in state.items() if k.startswith("head.")}
    assert backbone and head
    return backbone, head


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained_run(ray_cluster, demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-1w")
    config = small_config(demo_data, out)
    final = run_training(config)
    return out, final, config


def test_stage1_trains_only_the_head(trained_run):
    out, _, _ = trained_run
    init_backbone, init_head = split_state(weights(out / "init"))
    s1_backbone, s1_head = split_state(weights(out / "stage1" / "best"))
    assert same(init_backbone, s1_backbone)  # weights and BatchNorm statistics untouched
    assert not same(init_head, s1_head)


def test_stage2_fine_tunes_the_backbone_from_stage1(trained_run):
    out, _, _ = trained_run
    s1_backbone, _ = split_state(weights(out / "stage1" / "best"))
    s2_backbone, _ = split_state(weights(out / "stage2" / "best"))
    changed = [k for k in s1_backbone if not torch.equal(s1_backbone[k], s2_backbone[k])]
    assert len(changed) > 0.9 * len(s1_backbone)
    assert read_card(out / "stage2" / "best").metrics["stage1"]["stage"] == "stage1"


def test_a_lone_worker_uses_every_cpu_of_the_cluster(trained_run):
    out, _, config = trained_run
    assert config.cpus_per_worker == 0  # the default
    history = json.loads((out / "stage2" / "history.json").read_text())
    assert {h["torch_threads"] for h in history} == {2}  # the session cluster has 2 CPUs


def test_the_model_learns_the_held_out_split(trained_run):
    out, _, _ = trained_run
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert report["split"] == "test" and report["n"] >= 20
    assert report["accuracy"] >= LEARNED_ACCURACY, report["accuracy"]
    assert report["macro_f1"] > 0.5


def test_run_directory_holds_card_config_manifest_curves_and_report(trained_run):
    out, final, config = trained_run
    card = read_card(final)
    manifest = load_manifest(out / "split_manifest.json")
    assert card.data_manifest_sha256 == manifest["sha256"]
    assert card.split_seed == config.split_seed
    assert set(card.metrics) == {"stage1", "stage2", "calibration", "test"}
    assert card.metrics["test"]["accuracy_ci95"][0] <= card.metrics["test"]["accuracy"]
    # Temperature scaling was fitted on the validation split and is what the report evaluated.
    assert card.calibration_temperature == card.metrics["calibration"]["temperature"] != 1.0
    report = json.loads((out / "evaluation" / "report.json").read_text())
    assert report["calibration"]["temperature"] == card.calibration_temperature
    assert report["calibration"]["ece_after"] == report["ece"]
    assert "before temperature scaling" in (out / "evaluation" / "report.md").read_text()
    assert card.training_config["stage2"]["lr"] == pytest.approx(1e-3)
    assert yaml.safe_load((final / "config.yaml").read_text())["backbone"] == "densenet121"
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for name in REPORT_FILES:
        assert (out / "evaluation" / name).is_file()
    history = json.loads((out / "stage2" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))


def test_the_out_of_scope_gate_is_fitted_measured_and_served_from_the_card(trained_run):
    from cxr_model.checkpoint import load_network
    from cxr_model.scope import load_scope
    from training.ood_pictures import KINDS
    from training.scope import assess
    from training.synthetic import render_out_of_scope

    out, final, config = trained_run
    card = read_card(final)
    gate_record, rates = card.scope["feature_gate"], card.scope["rates"]
    manifest = load_manifest(out / "split_manifest.json")
    n_train = sum(e["split"] == "train" for e in manifest["entries"])
    assert gate_record["fitted_on"] == f"train split, {n_train} images"
    assert gate_record["target_false_rejection"] == config.scope_false_rejection
    limits, gates = load_scope(final, card)  # verifies the files against the card's sha256
    assert gates.features.threshold == gate_record["threshold"]
    assert gates.layout.threshold == card.scope["layout_gate"]["threshold"]
    assert card.scope["layout_gate"]["fitted_on"] == gate_record["fitted_on"]
    assert rates["chest_radiographs"]["test"]["n"] == card.metrics["test"]["n"]
    assert set(rates["out_of_scope"]) == set(KINDS)
    for kind in ("colour_photo", "blank", "noise"):  # the image checks catch these every time
        assert rates["out_of_scope"][kind]["miss_rate"] == 0.0, rates["out_of_scope"][kind]
    # The recorded rates are reproducible from the checkpoint alone.
    model, _ = load_network(final)
    from cxr_model.classifier import Classifier

    rng = np.random.default_rng(99)
    verdicts, _, _ = assess(
        Classifier(model, card, device="cpu"),
        limits,
        gates,
        [render_out_of_scope("limb_radiograph", rng) for _ in range(10)],
    )
    assert all(v.reason in (None, "unlike_chest_radiographs") for v in verdicts)
    text = (final / "MODEL_CARD.md").read_text()
    assert "## Out-of-scope gate" in text and "false rejection" in text and "miss" in text


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-data")
    make_demo_dataset(root, per_class=10, seed=4)
    return root


def test_two_workers_and_resume_after_interruption(ray_cluster, small_data, tmp_path):
    config = small_config(
        small_data,
        tmp_path,
        workers=2,
        cpus_per_worker=1,
        stage1=StageConfig(epochs=1, lr=3e-3),
        stage2=StageConfig(epochs=1, lr=1e-3),
    )
    run_training(config)
    init_backbone, _ = split_state(weights(tmp_path / "init"))
    s1_backbone, _ = split_state(weights(tmp_path / "stage1" / "best"))
    s2_backbone, _ = split_state(weights(tmp_path / "stage2" / "best"))
    assert same(init_backbone, s1_backbone) and not same(s1_backbone, s2_backbone)
    first = json.loads((tmp_path / "stage2" / "history.json").read_text())
    assert [(h["world_size"], h["torch_threads"]) for h in first] == [(2, 1)]

    # Interrupted during stage 2: Ray holds the epoch-1 checkpoint, the stage never finished.
    shutil.rmtree(tmp_path / "stage2" / "best")
    shutil.rmtree(tmp_path / "checkpoint")
    config.stage2.epochs = 2
    run_training(config)
    resumed = json.loads((tmp_path / "stage2" / "history.json").read_text())
    assert [h["epoch"] for h in resumed] == [1, 2]
    assert resumed[0] == first[0]  # epoch 1 was restored, not trained again
    assert read_card(tmp_path / "checkpoint").metrics["stage2"]["epoch"] in (1, 2)
