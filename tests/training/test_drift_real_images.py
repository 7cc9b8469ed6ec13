"""Drift without ground truth on real radiographs (../shared's sample; skips without it): the reference
`cxr train` saves in the model card, held-out images through the serving engine, and a contrast-shifted
copy of them, as a new scanner's processing would give, crossing both the PSI threshold and the alert."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_model.checkpoint import read_card
from cxr_model.drift import FEATURES, PSI_SIGNIFICANT, DriftWindow
from cxr_model.engine import load_engine
from cxr_model.preprocessing import open_image, resize_levels
from cxr_model.scope import check_image
from tests.k8s.promtool import drift_alert_test, expected_drift_alert, psi_series, run_rule_tests

# The test split holds about 100 images: PSI is reported from half of that (serving's default is 100 of 500).
MIN_WINDOW = 50
CONTRAST = 0.5  # grey levels pulled halfway towards each image's mean: a flatter processing curve


def lower_contrast(image: Image.Image) -> Image.Image:
    grey = np.asarray(image.convert("L"), np.float32)
    return Image.fromarray(np.clip(grey.mean() + (grey - grey.mean()) * CONTRAST, 0, 255).astype(np.uint8))


def serve_stream(engine, window: DriftWindow, paths: list[Path], shift=None) -> int:
    """What the service does per upload: decode, model-size grey levels, the image checks (a refusal never
    reaches the classifier), then ``Engine.forward`` in batches, each into the drift window."""
    size, levels = engine.card.preprocess_spec.input_size, []
    for path in paths:
        image = open_image(path.read_bytes(), engine.card.preprocess_spec.max_pixels)
        image = shift(image) if shift else image
        grey = resize_levels(image, size)[None]
        if check_image(image, grey, engine.limits).in_scope:
            levels.append(grey)
    for start in range(0, len(levels), 16):
        probabilities, verdicts, _ = engine.forward(levels[start : start + 16])
        window.add_verdicts(probabilities, verdicts)
    return len(levels)


def test_a_contrast_shifted_stream_crosses_the_drift_threshold_and_fires_the_alert(
    real_trained_run, real_sample, tmp_path
):
    checkpoint = real_trained_run / "checkpoint"
    card = read_card(checkpoint)
    manifest = json.loads((real_trained_run / "split_manifest.json").read_text())
    splits = [e["split"] for e in manifest["entries"]]
    reference = card.drift_reference
    assert reference["n"] == splits.count("val") and set(FEATURES) <= set(reference)

    engine = load_engine(str(checkpoint), device="cpu")
    paths = [real_sample / e["path"] for e in manifest["entries"] if e["split"] == "test"]
    # One window the size of the held-out stream: the shifted images then replace it entirely, as a
    # replica's window does when a site's scanner changes.
    window = DriftWindow(reference, card.labels, size=len(paths), min_size=MIN_WINDOW)
    assert serve_stream(engine, window, paths) == len(paths) >= 90
    unshifted = window.psi()
    assert set(unshifted) == set(FEATURES) and max(unshifted.values()) < PSI_SIGNIFICANT, unshifted

    assert serve_stream(engine, window, paths, shift=lower_contrast) == len(paths)
    shifted = window.psi()
    assert shifted["scope_distance"] > PSI_SIGNIFICANT, shifted  # the gate's own view: unlike the training images

    # The measured figures as the replica's gauges, held for an hour, through the alert rule.
    for figures in (unshifted, shifted):
        series = [psi_series(feature, f"{value!r}x60") for feature, value in figures.items()]
        firing = [expected_drift_alert(f, v) for f, v in figures.items() if v > PSI_SIGNIFICANT]
        assert (figures is shifted) == bool(firing)
        result = run_rule_tests(tmp_path, [drift_alert_test(series, "45m", firing)])
        assert result.returncode == 0, (figures, result.stdout + result.stderr)
