"""Drift without ground truth (cxr_model.drift): the PSI maths, the reference and the sliding window."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from cxr_model.checkpoint import ModelCard, read_card, save_checkpoint
from cxr_model.drift import (
    EPSILON,
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    DriftReferenceError,
    DriftWindow,
    build_reference,
    psi,
)
from cxr_model.labels import COVID4
from cxr_model.network import build_model
from tests.helpers import make_card

LABELS = sorted(COVID4)


def test_psi_matches_hand_computed_values():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.274653, abs=1e-6)
    # An empty bin is floored at EPSILON: large but finite.
    expected = (0.5 - 1) * math.log(0.5 / 1) + (0.5 - EPSILON) * math.log(0.5 / EPSILON)
    assert psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(expected) == pytest.approx(4.6044, abs=1e-4)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(psi([0.25, 0.75], [0.5, 0.5]))  # symmetric
    with pytest.raises(ValueError, match="same bins"):
        psi([0.5, 0.5], [1.0])


def validation_like(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities over four labels and distance ratios; ``shift`` blurs the logits and moves
    images away from the training data, as a new scanner would."""
    logits = rng.normal(0, 1, (n, 4)) + 3.0 * np.eye(4)[rng.integers(0, 4, n)] * (1 - shift)
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ratios = rng.gamma(9, 0.07, n) * (1 + 2 * shift)
    return probabilities, ratios


def measures(ratios: np.ndarray) -> list[dict]:
    return [{"feature_distance": 10.0 * r, "feature_threshold": 10.0, "layout_distance": 1.0} for r in ratios]


@pytest.fixture
def reference() -> dict:
    probabilities, ratios = validation_like(np.random.default_rng(0), 3000)
    return build_reference(LABELS, probabilities, ratios)


def test_the_reference_is_small_json_with_quantile_bins(reference):
    assert reference["n"] == 3000 and reference["top_label"]["labels"] == LABELS
    assert len(json.dumps(reference)) < 2000
    for name in ("confidence", "scope_distance"):
        edges, shares = reference[name]["edges"], reference[name]["shares"]
        assert len(edges) == 9 and len(shares) == 10 and edges == sorted(edges)
        assert shares == pytest.approx([0.1] * 10, abs=0.002)  # equal expected shares: the reference's deciles
    assert sum(reference["top_label"]["shares"]) == pytest.approx(1.0)


def test_a_small_validation_split_gets_fewer_bins_and_no_gate_means_no_distance():
    probabilities, _ = validation_like(np.random.default_rng(1), 100)
    small = build_reference(LABELS, probabilities, None)
    assert len(small["confidence"]["shares"]) == 2  # 100 images, at least 50 per bin
    assert "scope_distance" not in small
    with pytest.raises(DriftReferenceError):
        build_reference(LABELS, probabilities[:, :3], None)


def test_same_distribution_stays_under_the_moderate_threshold_and_a_shift_crosses_the_significant(reference):
    window = DriftWindow(reference, LABELS, size=500, min_size=100)
    probabilities, ratios = validation_like(np.random.default_rng(2), 500)
    window.add(probabilities, measures(ratios))
    same = window.psi()
    assert set(same) == {"top_label", "confidence", "scope_distance"}
    assert max(same.values()) < PSI_MODERATE, same

    identical = DriftWindow(reference, LABELS, size=3000, min_size=100)
    probabilities, ratios = validation_like(np.random.default_rng(0), 3000)  # the reference's own images
    identical.add(probabilities, measures(ratios))
    assert max(identical.psi().values()) < 1e-9  # zero: serving bins with the edges the card stores

    shifted = DriftWindow(reference, LABELS, size=500, min_size=100)
    probabilities, ratios = validation_like(np.random.default_rng(3), 500, shift=0.6)
    shifted.add(probabilities, measures(ratios))
    moved = shifted.psi()
    assert moved["confidence"] > PSI_SIGNIFICANT and moved["scope_distance"] > PSI_SIGNIFICANT, moved


def test_the_window_slides_and_is_bounded(reference):
    window = DriftWindow(reference, LABELS, size=500, min_size=100)
    window.add(*shifted_batch(4, 500))
    assert window.psi()["scope_distance"] > PSI_SIGNIFICANT
    probabilities, ratios = validation_like(np.random.default_rng(5), 500)
    window.add(probabilities, measures(ratios))  # the shifted images have all slid out
    assert len(window) == 500 and max(window.psi().values()) < PSI_MODERATE


def shifted_batch(seed: int, n: int) -> tuple[np.ndarray, list[dict]]:
    probabilities, ratios = validation_like(np.random.default_rng(seed), n, shift=0.6)
    return probabilities, measures(ratios)


def test_nothing_is_reported_below_the_minimum_window(reference):
    window = DriftWindow(reference, LABELS, size=500, min_size=100)
    assert window.psi() == {} and len(window) == 0
    window.add(*shifted_batch(6, 99))
    assert window.psi() == {} and len(window) == 99
    window.add(*shifted_batch(7, 1))
    assert set(window.psi()) == {"top_label", "confidence", "scope_distance"}
    # Images without a feature gate's measures count for the other features only.
    gateless = DriftWindow(reference, LABELS, size=500, min_size=100)
    gateless.add(shifted_batch(8, 150)[0], [{}] * 150)
    assert set(gateless.psi()) == {"top_label", "confidence"}


def test_without_a_reference_the_window_counts_but_reports_nothing():
    window = DriftWindow(None, LABELS, size=50, min_size=10)
    window.add(*shifted_batch(9, 80))
    assert len(window) == 50 and window.psi() == {}
    with pytest.raises(ValueError, match="minimum"):
        DriftWindow(None, LABELS, size=50, min_size=60)
    with pytest.raises(ValueError, match="measures"):
        window.add(shifted_batch(10, 3)[0], [{}])


def test_a_reference_for_other_labels_or_malformed_is_refused(reference):
    with pytest.raises(DriftReferenceError, match="labels"):
        DriftWindow(reference, LABELS[::-1], size=500, min_size=100)
    broken = json.loads(json.dumps(reference))
    broken["confidence"]["shares"] = broken["confidence"]["shares"][:-1]
    with pytest.raises(DriftReferenceError, match="confidence"):
        DriftWindow(broken, LABELS, size=500, min_size=100)
    with pytest.raises(DriftReferenceError, match="malformed"):
        DriftWindow({"version": "x"}, LABELS, size=500, min_size=100)


def test_concurrent_batches_and_readers_keep_the_window_consistent(reference):
    window = DriftWindow(reference, LABELS, size=500, min_size=100)
    errors: list[BaseException] = []

    def feed(seed: int) -> None:
        try:
            for i in range(50):
                window.add(*shifted_batch(seed * 100 + i, 8))
                window.psi()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=feed, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(window) == 500
    assert all(np.isfinite(v) for v in window.psi().values())


def test_the_card_keeps_its_reference_and_old_cards_still_load(tmp_path, reference):
    card = make_card(drift_reference=reference)
    save_checkpoint(build_model("densenet121", 4, "none"), card, tmp_path)
    assert read_card(tmp_path).drift_reference == reference
    old = card.to_dict()
    del old["drift_reference"]  # a card written before drift monitoring
    assert ModelCard.from_dict(old).drift_reference == {}
