"""Input drift without ground truth: how far the served predictions have moved from the validation split.

No radiologist label is needed. Three features of every image the model ran on are compared with a
reference saved in the model card at training time (``build_reference``, on the validation split):

- ``top_label``: the share of images whose highest probability is each label;
- ``confidence``: the top-1 calibrated probability;
- ``scope_distance``: the feature gate's Mahalanobis distance divided by its threshold (so 1.0 is the
  refusal line, whatever the checkpoint), the out-of-scope gate's view of "unlike the training images".

``DriftWindow`` keeps the last N observations and reports, per feature, the Population Stability Index

    PSI = sum over bins i of (a_i - e_i) * ln(a_i / e_i)

where ``e_i`` is the reference's share of bin i and ``a_i`` the window's, each floored at ``EPSILON`` so an
empty bin gives a large but finite term. Conventional reading: below 0.1 no shift, 0.1-0.25 a moderate
shift worth watching, above 0.25 a significant shift (``PSI_MODERATE``, ``PSI_SIGNIFICANT``).

Two samples of one distribution still differ: with n reference and m window images over k bins, PSI
is about chi-squared with k - 1 degrees of freedom times (1/n + 1/m). Hence bins from the reference's
own quantiles (equal expected shares), at most one bin per ``MIN_PER_BIN`` reference images, and no
figure at all below a minimum window size.
"""

from __future__ import annotations

import math
import threading
from collections import deque

import numpy as np

DRIFT_VERSION = "cxr-drift-1"
FEATURES = ("top_label", "confidence", "scope_distance")
EPSILON = 1e-4
PSI_MODERATE, PSI_SIGNIFICANT = 0.1, 0.25
MAX_BINS = 10
# Reference images per bin: a bin's share is then known to within about +-30% (95%). By the chi-squared
# approximation, a split of 200 images gets 4 bins and chance alone takes a window of 100 such images over
# 0.25 about once in 1,000 (a window of 500: once in 10 million); 3,000 images get 10 bins, and a window of
# 500 passes 0.1 by chance about once in 400,000. Images that are not independent (one patient's series,
# one scanner's batch) spread wider: set CXR_DRIFT_WINDOW well above CXR_DRIFT_MIN_WINDOW.
MIN_PER_BIN = 50


class DriftReferenceError(ValueError):
    """A model card's drift reference that is malformed or does not match the card's labels."""


def psi(expected, actual, eps: float = EPSILON) -> float:
    """Population Stability Index of two share vectors over the same bins (see the module docstring)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    a = np.maximum(np.asarray(actual, dtype=np.float64), eps)
    if e.shape != a.shape:
        raise ValueError(f"PSI needs the same bins on both sides, not {e.shape} and {a.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(values: np.ndarray, max_bins: int = MAX_BINS, min_per_bin: int = MIN_PER_BIN) -> list[float]:
    """Inner bin edges at the reference's quantiles; the first and last bins are open-ended.

    Ties (a saturated confidence of 1.0, say) merge edges, so there may be fewer bins than asked."""
    bins = int(np.clip(len(values) // min_per_bin, 2, max_bins))
    inner = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(e) for e in np.unique(inner)]


def binned_shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Shares of ``values`` in the bins that ``edges`` cut (``len(edges) + 1`` bins)."""
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def label_shares(top: np.ndarray, n_labels: int) -> np.ndarray:
    return np.bincount(top, minlength=n_labels)[:n_labels] / max(len(top), 1)


def distance_ratios(measures: list[dict]) -> np.ndarray:
    """Feature-gate distance / threshold per image; NaN where the checkpoint has no feature gate."""
    distance = np.array([m.get("feature_distance", math.nan) for m in measures], np.float64)
    threshold = np.array([m.get("feature_threshold", math.nan) for m in measures], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero threshold gives inf, dropped as not finite
        return distance / threshold


def _rounded(values) -> list[float]:
    return [round(float(v), 6) for v in values]


def _histogram(values: np.ndarray) -> dict:
    # Shares from the edges as stored (rounded), so serving bins exactly as the reference was binned.
    edges = sorted(set(_rounded(quantile_edges(values))))
    return {"edges": edges, "shares": _rounded(binned_shares(values, edges))}


def build_reference(labels: list[str], probabilities: np.ndarray, ratios: np.ndarray | None) -> dict:
    """The card's ``drift_reference`` from validation-split probabilities [N, C] (calibrated, as served)
    and feature-gate distance / threshold per image (None without a feature gate)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels) or not len(probabilities):
        raise DriftReferenceError(f"need [N, {len(labels)}] validation probabilities, got {probabilities.shape}")
    reference = {
        "version": DRIFT_VERSION,
        "source": "validation split",
        "n": len(probabilities),
        "top_label": {"labels": list(labels), "shares": _rounded(label_shares(probabilities.argmax(1), len(labels)))},
        "confidence": _histogram(probabilities.max(axis=1)),
    }
    finite = np.asarray(ratios if ratios is not None else [], np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite):
        reference["scope_distance"] = {"measure": "feature gate distance / threshold", **_histogram(finite)}
    return reference


def check_reference(reference: dict, labels: list[str]) -> None:
    """Raise ``DriftReferenceError`` unless ``reference`` is usable for a model with ``labels``."""
    try:
        top = reference["top_label"]
        if top["labels"] != list(labels) or len(top["shares"]) != len(labels):
            raise DriftReferenceError("the drift reference's labels are not the model card's labels")
        for name in ("confidence", "scope_distance"):
            if name in reference:
                edges, shares = reference[name]["edges"], reference[name]["shares"]
                if len(shares) != len(edges) + 1 or list(edges) != sorted(edges):
                    raise DriftReferenceError(f"the drift reference's {name} bins are malformed")
    except (KeyError, TypeError) as error:
        raise DriftReferenceError(f"the drift reference is malformed: {error!r}") from error


class DriftWindow:
    """The last ``size`` served images (top label, confidence, distance ratio) and their PSI against a
    reference (None: the window still counts, but reports no PSI). Sizes come from ``serve.settings``.
    Thread-safe: batches may record while a health check reads."""

    def __init__(self, reference: dict | None, labels: list[str], size: int, min_size: int):
        if not 1 <= min_size <= size:
            raise ValueError(f"the drift window's minimum ({min_size}) must be between 1 and its size ({size})")
        if reference:
            check_reference(reference, labels)
        self.reference, self.labels, self.size, self.min_size = reference or None, list(labels), size, min_size
        self._rows: deque[tuple[int, float, float]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, probabilities: np.ndarray, measures: list[dict]) -> None:
        """One batch: probabilities [N, C] and each image's out-of-scope measures (may be empty dicts)."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if len(probabilities) != len(measures):
            raise ValueError(f"{len(probabilities)} rows of probabilities but {len(measures)} of measures")
        if not len(probabilities):
            return
        rows = zip(probabilities.argmax(1).tolist(), probabilities.max(1).tolist(), distance_ratios(measures).tolist())
        with self._lock:
            self._rows.extend(rows)

    def add_verdicts(self, probabilities: np.ndarray, verdicts: list) -> None:
        """``Engine.forward``'s batch: its probabilities and gate verdicts (None without fitted gates). Every
        image counts, refused by the gate or not: the reference is the whole validation split."""
        self.add(probabilities, [(v.measures or {}) if v is not None else {} for v in verdicts])

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def psi(self) -> dict[str, float]:
        """PSI per feature the reference covers, once the window holds ``min_size`` images for it."""
        if self.reference is None:
            return {}
        with self._lock:
            rows = np.array(self._rows, dtype=np.float64).reshape(-1, 3)
        out = {}
        if len(rows) >= self.min_size:
            top = rows[:, 0].astype(np.int64)
            out["top_label"] = psi(self.reference["top_label"]["shares"], label_shares(top, len(self.labels)))
            confidence = self.reference["confidence"]
            out["confidence"] = psi(confidence["shares"], binned_shares(rows[:, 1], confidence["edges"]))
        ratios = rows[:, 2][np.isfinite(rows[:, 2])]
        if "scope_distance" in self.reference and len(ratios) >= self.min_size:
            distance = self.reference["scope_distance"]
            out["scope_distance"] = psi(distance["shares"], binned_shares(ratios, distance["edges"]))
        return out
