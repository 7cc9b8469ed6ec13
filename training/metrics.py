"""Classification metrics from true labels and probabilities; pure functions on arrays.

Multiclass ``y_true`` is a vector of class indices; multilabel ``y_true`` is a
0/1 matrix. Built on scikit-learn so the numbers match what reviewers recompute.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from cxr_model.labels import MULTICLASS, LabelSet


def predict_labels(probs: np.ndarray, label_set: LabelSet) -> np.ndarray:
    if label_set.task == MULTICLASS:
        return probs.argmax(axis=1)
    return (probs >= np.asarray(label_set.thresholds)[None, :]).astype(int)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15):
    """ECE with equal-width bins over (0, 1]; also returns the reliability-diagram bins."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    ece, bins = 0.0, []
    for i in range(n_bins):
        mask = index == i
        if not mask.any():
            continue
        conf, acc = confidence[mask].mean(), correct[mask].mean()
        ece += mask.mean() * abs(conf - acc)
        bins.append(
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": int(mask.sum()),
                "confidence": float(conf),
                "accuracy": float(acc),
            }
        )
    return float(ece), bins


def _calibration_inputs(y_true, probs, y_pred, label_set):
    if label_set.task == MULTICLASS:
        return probs.max(axis=1), (y_pred == y_true)
    confidence = np.where(y_pred == 1, probs, 1.0 - probs)
    return confidence.ravel(), (y_pred == y_true).ravel()


def _auc_per_class(y_true, probs, label_set) -> list[float | None]:
    aucs = []
    for k in range(len(label_set)):
        positives = (y_true == k) if label_set.task == MULTICLASS else y_true[:, k] == 1
        if positives.all() or not positives.any():
            aucs.append(None)  # undefined without both classes present
        else:
            aucs.append(float(roc_auc_score(positives, probs[:, k])))
    return aucs


def macro_f1(y_true: np.ndarray, probs: np.ndarray, label_set: LabelSet) -> float:
    labels = list(range(len(label_set))) if label_set.task == MULTICLASS else None
    return float(f1_score(y_true, predict_labels(probs, label_set), labels=labels, average="macro", zero_division=0))


def accuracy(y_true: np.ndarray, probs: np.ndarray, label_set: LabelSet) -> float:
    """Multiclass: fraction correct. Multilabel: exact-match (subset) accuracy."""
    y_pred = predict_labels(probs, label_set)
    if label_set.task == MULTICLASS:
        return float((y_pred == y_true).mean())
    return float((y_pred == y_true).all(axis=1).mean())


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, label_set: LabelSet, n_bins: int = 15) -> dict:
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    y_pred = predict_labels(probs, label_set)
    labels = list(range(len(label_set)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels if label_set.task == MULTICLASS else None, zero_division=0
    )
    aucs = _auc_per_class(y_true, probs, label_set)
    defined = [a for a in aucs if a is not None]
    ece, bins = expected_calibration_error(*_calibration_inputs(y_true, probs, y_pred, label_set), n_bins)
    per_class = {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            "roc_auc": aucs[k],
        }
        for k, name in enumerate(label_set.names)
    }
    if label_set.task == MULTICLASS:
        matrix = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    else:
        matrix = multilabel_confusion_matrix(y_true, y_pred).tolist()
    return {
        "n": int(len(y_true)),
        "accuracy": accuracy(y_true, probs, label_set),
        "macro_f1": float(np.mean(f1)),
        "macro_roc_auc": float(np.mean(defined)) if defined else None,
        "ece": ece,
        "calibration_bins": bins,
        "per_class": per_class,
        "confusion_matrix": matrix,
    }


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    label_set: LabelSet,
    metric,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(y_true, probs, label_set)`` over images."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    values = [metric(y_true[idx], probs[idx], label_set) for idx in (rng.integers(0, n, n) for _ in range(n_resamples))]
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray) -> list[float]:
    """Per-label threshold maximising F1 on validation data (multilabel)."""
    thresholds = []
    candidates = np.linspace(0.05, 0.95, 19)
    for k in range(probs.shape[1]):
        if y_true[:, k].sum() == 0:
            thresholds.append(0.5)
            continue
        scores = [f1_score(y_true[:, k], probs[:, k] >= t, zero_division=0) for t in candidates]
        thresholds.append(float(candidates[int(np.argmax(scores))]))
    return thresholds


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, task: str) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising validation NLL of f(logits / T).

    One scalar, so the ranking of labels (and accuracy, ROC-AUC) is unchanged; only how far
    the probabilities lean is corrected.
    """
    import torch
    from scipy.optimize import minimize_scalar

    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(y_true)

    def nll(log_t: float) -> float:
        scaled = z / float(np.exp(log_t))
        if task == MULTICLASS:
            return float(torch.nn.functional.cross_entropy(scaled, y.long()))
        return float(torch.nn.functional.binary_cross_entropy_with_logits(scaled, y.double()))

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x))
