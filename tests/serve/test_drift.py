"""Drift gauges from the live app: a model whose card has a drift reference, rolled in, exports PSI per
feature under its own version once its window is full enough; images like the reference's stay low."""

from __future__ import annotations

import math
import re
import shutil
import time

import httpx

from cxr_model.checkpoint import read_card, write_card
from cxr_model.drift import FEATURES, PSI_SIGNIFICANT, build_reference, distance_ratios
from cxr_model.engine import load_engine
from cxr_model.labels import COVID4
from cxr_model.preprocessing import open_image, resize_levels
from tests.serve.helpers import chest_png

VERSION = "0.0.1-drift-reference"
LABELS = sorted(COVID4)


def generated(seeds) -> list[bytes]:
    """Generated chest pictures of every label in turn: the reference's images and the traffic alike."""
    return [chest_png(seed, LABELS[seed % 4]) for seed in seeds]


def with_reference(service, directory) -> None:
    """The suite's checkpoint under a new version, with a reference from its own answers (as training
    does on the validation split) on 200 generated pictures, decoded as the Ingress decodes uploads."""
    shutil.copytree(service.checkpoint, directory)
    engine = load_engine(str(directory), device="cpu", runtime="torch")
    size = engine.card.preprocess_spec.input_size
    levels = [resize_levels(open_image(png, 10**8), size)[None] for png in generated(range(6000, 6200))]
    probabilities, verdicts, _ = engine.forward(levels)
    card = read_card(directory)
    card.version = VERSION
    card.drift_reference = build_reference(card.labels, probabilities, distance_ratios([v.measures for v in verdicts]))
    write_card(card, directory)


def drift_series(text: str) -> tuple[dict[str, float], float]:
    """(PSI per feature, max over replicas; the largest window size) exported for ``VERSION``."""
    psi, window = {}, 0.0
    for line in text.splitlines():
        if line.startswith("ray_cxr_drift_") and f'model_version="{VERSION}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("ray_cxr_drift_psi"):
                feature = re.search(r'feature="([a-z_]+)"', line).group(1)
                psi[feature] = max(psi.get(feature, 0.0), value)
            elif line.startswith("ray_cxr_drift_window_size"):
                window = max(window, value)
    return psi, window


def test_a_rolled_model_with_a_reference_exports_psi_per_feature(service, ray_metrics_url, tmp_path):
    with_reference(service, tmp_path / "with-reference")
    service.redeploy({"checkpoint": str(tmp_path / "with-reference"), "batch_wait_timeout_s": 0.2})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and service.http.get("/api/v1/model").json().get("version") != VERSION:
            time.sleep(0.5)
        psi, window = {}, 0.0
        # One client, so one replica takes most of it; each replica reports once 100 images of its own are in.
        for start in range(6200, 6600, 50):
            for png in generated(range(start, start + 50)):
                assert service.predict(png).status_code == 200
            deadline = time.monotonic() + (15 if start > 6200 else 0)  # Ray exports every 2 s here
            while time.monotonic() < deadline and set(psi) != set(FEATURES):
                psi, window = drift_series(httpx.get(ray_metrics_url, timeout=10).text)
                time.sleep(1)
            if set(psi) == set(FEATURES):
                break
        assert set(psi) == set(FEATURES) and window >= 100, (psi, window)
        # Traffic drawn like the reference's images: the served features are the ones the reference measured.
        # A mismatch (other preprocessing, a distance not divided by its threshold) gives several units; the
        # random-init model's confidence spans only ~0.03, so with 100 images chance alone reaches ~0.3 there.
        assert all(math.isfinite(v) and v >= 0 for v in psi.values()), psi
        assert psi["top_label"] < PSI_SIGNIFICANT and psi["scope_distance"] < PSI_SIGNIFICANT and psi["confidence"] < 1
    finally:
        service.redeploy({"checkpoint": str(service.checkpoint), "batch_wait_timeout_s": 0.2})
