"""Real radiographs through `cxr train` and `cxr export --int8` (../shared's sample; skips without it)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cxr_model.checkpoint import read_card, write_card
from cxr_model.cli import main as cxr
from cxr_model.onnx_runtime import INT8_FILE, OnnxClassifier
from cxr_model.quantize import recheck_rows
from cxr_model.scope import load_scope
from tests.helpers import REPORT_FILES
from training.export import split_inputs

# Four balanced classes: chance is 0.25. On the ~100-image test split, P(accuracy >= 0.6 | p = 0.25)
# is below 1e-12 (binomial), so passing means the network learned from real pictures; the recipe
# reaches ~0.84 here, which leaves room for seed-to-seed noise.
LEARNED_ACCURACY = 0.6


def test_training_learns_on_real_radiographs(real_trained_run):
    report = json.loads((real_trained_run / "evaluation" / "report.json").read_text())
    assert report["split"] == "test" and report["n"] >= 90
    assert report["accuracy"] >= LEARNED_ACCURACY, report["accuracy"]
    assert not read_card(real_trained_run / "checkpoint").synthetic_demo


# The gate's goals (issue 15): at most 3% of real radiographs refused, at least 95% of each out-of-scope kind.
MAX_FALSE_REJECTION, MIN_REFUSAL = 0.03, 0.95


def test_the_gate_accepts_real_radiographs_and_refuses_every_out_of_scope_kind(real_trained_run, real_sample):
    from cxr_model.checkpoint import load_network
    from cxr_model.classifier import Classifier
    from training.ood_pictures import KINDS, out_of_scope_pictures
    from training.scope import assess

    directory = real_trained_run / "checkpoint"
    card = read_card(directory)
    rates = card.scope["rates"]
    test = rates["chest_radiographs"]["test"]
    assert test["n"] >= 90 and test["false_rejection_rate"] <= MAX_FALSE_REJECTION, test
    for kind in KINDS:  # the card's own figures, on pictures the gates never saw
        row = rates["out_of_scope"][kind]
        assert row["n"] >= 40 and 1 - row["miss_rate"] >= MIN_REFUSAL, (kind, row)
    assert "MODEL_CARD.md" in {p.name for p in directory.iterdir()}
    assert "Layout gate" in (directory / "MODEL_CARD.md").read_text()

    # Re-measured through the gate code serving runs, on pictures drawn with another seed, and on every
    # real radiograph the gates were not fitted on (validation and test splits).
    model, _ = load_network(directory)
    classifier = Classifier(model, card, device="cpu")
    limits, gates = load_scope(directory, card)
    manifest = json.loads((real_trained_run / "split_manifest.json").read_text())
    held_out = [e for e in manifest["entries"] if e["split"] in ("val", "test")]
    from cxr_model.preprocessing import open_image

    radiographs = [open_image((real_sample / e["path"]).read_bytes(), 10**8) for e in held_out]
    verdicts, _, _ = assess(classifier, limits, gates, radiographs)
    refused = [e["path"] for e, v in zip(held_out, verdicts) if not v.in_scope]
    assert len(refused) / len(held_out) <= MAX_FALSE_REJECTION, refused
    rng = np.random.default_rng(2026)
    for kind in KINDS:
        verdicts, _, _ = assess(classifier, limits, gates, out_of_scope_pictures(kind, 40, rng))
        assert np.mean([not v.in_scope for v in verdicts]) >= MIN_REFUSAL, kind


@pytest.fixture
def checkpoint_copy(real_trained_run, tmp_path):
    directory = tmp_path / "checkpoint"
    shutil.copytree(real_trained_run / "checkpoint", directory)
    return directory, real_trained_run / "split_manifest.json"


def test_int8_export_agrees_with_fp32_on_held_out_radiographs_and_is_recorded(checkpoint_copy, capsys):
    directory, manifest = checkpoint_copy
    code = cxr(["export", str(directory), "--int8", "--manifest", str(manifest)])  # the default floors
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "CPU int8/bf16 instructions:" in printed and "gate decisions on" in printed
    record = read_card(directory).exports["onnx_int8"]
    agreement = record["agreement"]
    assert agreement["held_out"] >= 90 and agreement["top1"] >= 0.99 and agreement["max_abs_dp"] <= 0.03
    # Flips are counted apart on images served as low confidence; the figures add up.
    assert 0.5 * agreement["held_out"] < agreement["confident"] <= agreement["held_out"]
    flips_all = round((1 - agreement["top1_all"]) * agreement["held_out"])
    flips_confident = round((1 - agreement["top1"]) * agreement["confident"])
    assert flips_all == flips_confident + agreement["low_confidence_flips"]
    assert agreement["gate_images"] > agreement["held_out"]  # out-of-scope pictures were compared too
    assert agreement["gate"] == 1.0 and 0 < agreement["gate_recheck_band"] < 0.5
    assert record["calibration_images"] >= 100 and "val split" in record["sources"]["calibration"]
    assert json.loads((directory / "onnx.json").read_text())["int8"]["onnx_sha256"] == record["onnx_sha256"]

    card = read_card(directory)
    held_out = torch.from_numpy(split_inputs(json.loads(manifest.read_text()), "test", 64, card.preprocess_spec))
    fp32 = OnnxClassifier(directory, card).predict_batch(held_out)
    int8 = OnnxClassifier(directory, card, precision="int8").predict_batch(held_out)
    assert np.abs(fp32 - int8).max() <= 0.03 and (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.95
    # The gate's fp32 path: the int8 engine carries the fp32 session for near-threshold images.
    engine = OnnxClassifier(directory, card, precision="int8")
    assert engine.gate_recheck_band == record["gate_recheck_band"]
    assert np.allclose(engine.predict_with_features(held_out[:4], fp32=True)[0], fp32[:4], atol=1e-6)


def test_the_recheck_picks_exactly_the_images_near_the_gate_threshold(real_trained_run):
    gate = load_scope(real_trained_run / "checkpoint", read_card(real_trained_run / "checkpoint"))[1].features
    direction = np.linalg.eigh(gate.precision)[1][:, -1]  # distance grows fastest along this axis
    unit = gate.distances((gate.mean + direction)[None])[0]
    features = np.stack([gate.mean + direction * gate.threshold * f / unit for f in (0.5, 0.97, 1.02, 1.5)])
    assert list(recheck_rows(gate, features, band=0.05)) == [1, 2]
    assert list(recheck_rows(gate, features, band=0.0)) == [] and list(recheck_rows(None, features, 0.05)) == []


def test_an_int8_export_that_misses_a_floor_is_refused_and_leaves_nothing(checkpoint_copy, capsys):
    directory, manifest = checkpoint_copy
    before = (directory / "model_card.json").read_text()
    code = cxr(["export", str(directory), "--int8", "--manifest", str(manifest), "--max-dp", "1e-6"])
    printed = capsys.readouterr().out
    assert code == 1 and "REFUSED" in printed and "max |dp|" in printed
    assert not (directory / INT8_FILE).exists()
    assert "int8" not in json.loads((directory / "onnx.json").read_text())
    assert (directory / "model_card.json").read_text() == before
    with pytest.raises(RuntimeError, match="cxr export --int8"):
        OnnxClassifier(directory, read_card(directory), precision="int8")


def test_int8_export_refuses_a_manifest_the_checkpoint_was_not_trained_on(checkpoint_copy):
    directory, manifest = checkpoint_copy
    card = read_card(directory)
    card.data_manifest_sha256 = "0" * 64  # as if trained on another split
    write_card(card, directory)
    with pytest.raises(SystemExit, match="not the split this checkpoint was trained on"):
        cxr(["export", str(directory), "--int8", "--manifest", str(manifest)])
    assert not (directory / INT8_FILE).exists()


def test_cxr_evaluate_on_a_real_folder_writes_every_report_with_sane_values(real_trained_run, real_sample, tmp_path):
    import csv

    from PIL import Image

    out = tmp_path / "evaluation"
    checkpoint = real_trained_run / "checkpoint"
    assert cxr(["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(real_sample), "--out", str(out)]) == 0
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 100, name
        if name.endswith(".png"):
            with Image.open(out / name) as plot:
                assert min(plot.size) >= 200, name
    report = json.loads((out / "report.json").read_text())
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    labels = read_card(checkpoint).labels
    assert report["n"] == len(rows) == 1000 and report["labels"] == labels
    assert report["accuracy"] == pytest.approx(np.mean([r["true"] == r["predicted"] for r in rows]))
    assert LEARNED_ACCURACY <= report["accuracy"] <= 1 and 0.5 < report["macro_roc_auc"] <= 1
    assert report["accuracy_ci95"][0] <= report["accuracy"] <= report["accuracy_ci95"][1]
    assert 0 <= report["ece"] <= 1 and 0 <= report["low_confidence_rate"] <= 1
    assert np.asarray(report["confusion_matrix"]).sum() == 1000
    probabilities = np.array([[float(r[f"p_{label}"]) for label in labels] for r in rows])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    per_class = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["label"] for r in per_class] == labels and sum(int(r["support"]) for r in per_class) == 1000
    assert "accuracy" in (out / "report.md").read_text()


def test_gradcam_on_real_radiographs_is_not_degenerate(real_trained_run, real_sample):
    from cxr_model.checkpoint import load_network
    from cxr_model.gradcam import gradcam
    from cxr_model.preprocessing import preprocess

    model, card = load_network(real_trained_run / "checkpoint")
    entries = json.loads((real_trained_run / "split_manifest.json").read_text())["entries"]
    test = [e for e in entries if e["split"] == "test"][::12][:8]
    maps = []
    for entry in test:
        x = preprocess((real_sample / entry["path"]).read_bytes(), card.preprocess_spec)
        heatmap, index = gradcam(model, x)
        assert heatmap.shape == x.shape[-2:] and np.isfinite(heatmap).all()
        assert heatmap.min() == 0 and heatmap.max() == pytest.approx(1.0)  # normalised, not all zero
        assert heatmap.std() > 0.1 and (heatmap > 0.5).mean() < 0.9  # a region stands out, not the whole frame
        other, _ = gradcam(model, x, (index + 1) % len(card.labels))
        assert not np.allclose(other, heatmap, atol=0.05)  # each label has its own evidence
        maps.append(heatmap.ravel())
    # Different radiographs, different evidence: no fixed pattern stamped on every image.
    correlations = np.corrcoef(np.stack(maps))[np.triu_indices(len(maps), 1)]
    assert correlations.min() < 0.9, correlations
