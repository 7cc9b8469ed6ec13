"""Fitting the out-of-scope gates after training, and measuring them for the model card.

Both fitted gates (cxr_model.scope) are fitted on the training split (no
augmentation) and thresholded on the validation split. They are then measured
on the held-out test split (false rejections: chest radiographs refused) and on
out-of-scope pictures of each kind (misses: pictures let through to a label),
drawn from real photographs and scans as well as from two independent
generators (training.ood_pictures), none of which the gates ever saw.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from cxr_model.checkpoint import sha256_file
from cxr_model.classifier import Classifier
from cxr_model.preprocessing import levels_to_unit, normalize, open_image, resize_levels
from cxr_model.scope import (
    GATE_FILE,
    LAYOUT_FILE,
    LAYOUT_GRID,
    SCOPE_VERSION,
    FeatureGate,
    ImageLimits,
    LayoutGate,
    ScopeGates,
    ScopeVerdict,
    check_image,
    fit_feature_gate,
    fit_layout_gate,
)
from training.ood_pictures import KINDS, SOURCES, out_of_scope_pictures

METHOD = (
    "Image checks (colour, blank, noise) on every upload; then two Mahalanobis distances from the training "
    "split (Ledoit-Wolf covariance), each thresholded at the validation split's {quantile:.0%} quantile: of "
    "the backbone's pooled features (feature gate) and of a {grid}x{grid} exposure-normalised layout of the "
    "image with its grey-level quantiles (layout gate). An image must pass all three."
)


def _images(root: Path, entries: list[dict], max_pixels: int):
    return [open_image((root / e["path"]).read_bytes(), max_pixels) for e in entries]


def assess(
    classifier: Classifier, limits: ImageLimits, gates: ScopeGates | None, images, batch_size: int = 32
) -> tuple[list[ScopeVerdict], np.ndarray, list[np.ndarray]]:
    """The serving path's verdict for each image (image checks first, then the fitted gates), with
    its pooled features and model-size grey levels."""
    spec = classifier.card.preprocess_spec
    verdicts: list[ScopeVerdict | None] = []
    levels, all_features = [], []
    for image in images:
        levels.append(resize_levels(image, spec.input_size)[None])
        verdict = check_image(image, levels[-1], limits)
        verdicts.append(None if verdict.in_scope and gates is not None else verdict)
    for start in range(0, len(levels), batch_size):
        batch = np.stack([levels_to_unit(g) for g in levels[start : start + batch_size]])
        all_features.append(classifier.predict_with_features(normalize(torch.from_numpy(batch), spec))[1])
    features = np.concatenate(all_features) if all_features else np.zeros((0, 0), np.float32)
    pending = [i for i, v in enumerate(verdicts) if v is None]
    if gates is not None and pending:
        for i, verdict in zip(pending, gates.verdicts(features[pending], [levels[i] for i in pending])):
            verdicts[i] = verdict
    return verdicts, features, levels


def _rates(verdicts: list[ScopeVerdict]) -> dict:
    refused = [v for v in verdicts if not v.in_scope]
    reasons = [v.reason for v in refused]
    by_reason = {reason: reasons.count(reason) for reason in sorted(set(reasons))}
    # Which fitted gate refused (both can): shows what each one adds.
    by_gate = {name: sum(_over(v.measures or {}, name) for v in refused) for name in ("feature", "layout")}
    return {"n": len(verdicts), "refused": len(refused), "refused_by": by_reason, "refused_by_gate": by_gate}


def _over(measures: dict, gate: str) -> bool:
    return measures.get(f"{gate}_distance", 0.0) > measures.get(f"{gate}_threshold", np.inf)


def _gate_record(gate, directory: Path, file: str, fitted_on: int, threshold_from: int, false_rejection: float):
    gate.save(directory / file)
    return {
        "file": file,
        "sha256": sha256_file(directory / file),
        "threshold": gate.threshold,
        "target_false_rejection": false_rejection,
        "fitted_on": f"train split, {fitted_on} images",
        "threshold_from": f"val split, {threshold_from} images",
        "feature_dim": int(gate.mean.shape[0]),
    }


def measure_out_of_scope(classifier, limits, gates, per_kind: int, seed: int) -> dict:
    """Refusal rates per out-of-scope kind, each picture through PNG bytes and the upload decoder."""
    rng = np.random.default_rng(seed)
    max_pixels = classifier.card.preprocess_spec.max_pixels
    rates = {}
    for kind in KINDS:
        pictures = [open_image(_png(p), max_pixels) for p in out_of_scope_pictures(kind, per_kind, rng)]
        verdicts, _, _ = assess(classifier, limits, gates, pictures)
        rates[kind] = _rates(verdicts) | {
            "miss_rate": float(np.mean([v.in_scope for v in verdicts])),
            "source": SOURCES[kind],
        }
    return rates


def fit_and_measure(
    model, card, manifest: dict, directory: Path, false_rejection: float, ood_per_kind: int, seed: int = 0
) -> tuple[dict, np.ndarray]:
    """Fit the gates into ``directory`` (the final checkpoint); return the card's ``scope`` section and each
    validation image's feature-gate distance / threshold (for the card's drift reference, cxr_model.drift)."""
    classifier = Classifier(model, card)
    limits = ImageLimits()
    root, max_pixels = Path(manifest["root"]), card.preprocess_spec.max_pixels
    split = {name: [e for e in manifest["entries"] if e["split"] == name] for name in ("train", "val", "test")}
    _, train_features, train_levels = assess(classifier, limits, None, _images(root, split["train"], max_pixels))
    _, val_features, val_levels = assess(classifier, limits, None, _images(root, split["val"], max_pixels))
    directory.mkdir(parents=True, exist_ok=True)
    feature_gate = fit_feature_gate(train_features, val_features, false_rejection)
    layout_gate = fit_layout_gate(train_levels, val_levels, false_rejection)
    counts = len(train_levels), len(val_levels), false_rejection
    records = {
        "feature_gate": _gate_record(feature_gate, directory, GATE_FILE, *counts),
        "layout_gate": _gate_record(layout_gate, directory, LAYOUT_FILE, *counts),
    }
    gates = ScopeGates(FeatureGate.load(directory / GATE_FILE), LayoutGate.load(directory / LAYOUT_FILE))
    # From the gate as saved (float32), so the reference matches the distances serving will measure.
    val_ratios = gates.features.distances(val_features) / gates.features.threshold

    chest = {}
    for name in ("val", "test"):
        if split[name]:
            verdicts, _, _ = assess(classifier, limits, gates, _images(root, split[name], max_pixels))
            chest[name] = _rates(verdicts) | {
                "false_rejection_rate": float(np.mean([not v.in_scope for v in verdicts]))
            }
    scope = {
        "version": SCOPE_VERSION,
        "method": METHOD.format(quantile=1 - false_rejection, grid=LAYOUT_GRID),
        "image_limits": limits.to_dict(),
        **records,
        "rates": {
            "chest_radiographs": chest,
            "out_of_scope": measure_out_of_scope(classifier, limits, gates, ood_per_kind, seed),
            "out_of_scope_source": f"{ood_per_kind} pictures per kind from real photographs and scans, rendered "
            "text and two independent generators (training.ood_pictures); none used in fitting",
        },
    }
    return scope, val_ratios


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
