"""Fitting the out-of-scope gate after training, and measuring it for the model card.

The feature gate is fitted on the training split's features (no augmentation)
and thresholded on the validation split. It is then measured on the held-out
test split (false rejections: chest radiographs refused) and on generated
out-of-scope pictures of each kind (misses: pictures let through to a label).
No real photographs or other radiographs can be had offline, so the miss rates
are on generated pictures and the card says so.
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
    SCOPE_VERSION,
    FeatureGate,
    ImageLimits,
    ScopeVerdict,
    check_image,
    fit_feature_gate,
)
from training.synthetic import OUT_OF_SCOPE_KINDS, render_out_of_scope

METHOD = (
    "Image checks (colour, blank, noise) on every upload, then the Mahalanobis distance of the "
    "backbone's pooled features from the training split's (Ledoit-Wolf covariance), thresholded at "
    "the validation split's {quantile:.0%} quantile."
)


def _images(root: Path, entries: list[dict], max_pixels: int):
    return [open_image((root / e["path"]).read_bytes(), max_pixels) for e in entries]


def assess(
    classifier: Classifier, limits: ImageLimits, gate: FeatureGate | None, images, batch_size: int = 32
) -> tuple[list[ScopeVerdict], np.ndarray]:
    """The serving path's verdict for each image: image checks first, then the feature gate."""
    spec = classifier.card.preprocess_spec
    verdicts: list[ScopeVerdict | None] = []
    pending, tensors, all_features = [], [], []
    for image in images:
        levels = resize_levels(image, spec.input_size)[None]
        verdict = check_image(image, levels, limits)
        verdicts.append(None if verdict.in_scope and gate is not None else verdict)
        tensors.append(normalize(torch.from_numpy(levels_to_unit(levels)), spec))
    for start in range(0, len(tensors), batch_size):
        all_features.append(classifier.predict_with_features(torch.stack(tensors[start : start + batch_size]))[1])
    features = np.concatenate(all_features) if all_features else np.zeros((0, 0), np.float32)
    if gate is not None:
        pending = [i for i, v in enumerate(verdicts) if v is None]
        for i, verdict in zip(pending, gate.verdicts(features[pending]) if pending else []):
            verdicts[i] = verdict
    return verdicts, features


def _rates(verdicts: list[ScopeVerdict]) -> dict:
    refused = [v.reason for v in verdicts if not v.in_scope]
    by_reason = {reason: refused.count(reason) for reason in sorted(set(refused))}
    return {"n": len(verdicts), "refused": len(refused), "refused_by": by_reason}


def fit_and_measure(
    model, card, manifest: dict, directory: Path, false_rejection: float, ood_per_kind: int, seed: int = 0
) -> dict:
    """Fit the gate into ``directory`` (the final checkpoint) and return the card's ``scope`` section."""
    classifier = Classifier(model, card)
    limits = ImageLimits()
    root, max_pixels = Path(manifest["root"]), card.preprocess_spec.max_pixels
    split = {name: [e for e in manifest["entries"] if e["split"] == name] for name in ("train", "val", "test")}
    _, train_features = assess(classifier, limits, None, _images(root, split["train"], max_pixels))
    _, val_features = assess(classifier, limits, None, _images(root, split["val"], max_pixels))
    gate = fit_feature_gate(train_features, val_features, false_rejection)
    directory.mkdir(parents=True, exist_ok=True)
    gate.save(directory / GATE_FILE)

    chest = {}
    for name in ("val", "test"):
        if split[name]:
            verdicts, _ = assess(classifier, limits, gate, _images(root, split[name], max_pixels))
            refused = float(np.mean([not v.in_scope for v in verdicts]))
            chest[name] = _rates(verdicts) | {"false_rejection_rate": refused}
    rng = np.random.default_rng(seed)
    unrelated = {}
    for kind in OUT_OF_SCOPE_KINDS:
        # Through PNG bytes and the upload decoder, exactly as an upload would arrive.
        images = [open_image(_png(render_out_of_scope(kind, rng)), max_pixels) for _ in range(ood_per_kind)]
        verdicts, _ = assess(classifier, limits, gate, images)
        unrelated[kind] = _rates(verdicts) | {"miss_rate": float(np.mean([v.in_scope for v in verdicts]))}
    return {
        "version": SCOPE_VERSION,
        "method": METHOD.format(quantile=1 - false_rejection),
        "image_limits": limits.to_dict(),
        "feature_gate": {
            "file": GATE_FILE,
            "sha256": sha256_file(directory / GATE_FILE),
            "threshold": gate.threshold,
            "target_false_rejection": false_rejection,
            "fitted_on": f"train split, {len(train_features)} images",
            "threshold_from": f"val split, {len(val_features)} images",
            "feature_dim": int(train_features.shape[1]),
        },
        "rates": {
            "chest_radiographs": chest,
            "out_of_scope": unrelated,
            "out_of_scope_source": "generated pictures (training.synthetic.render_out_of_scope), "
            f"{ood_per_kind} per kind",
        },
    }


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
