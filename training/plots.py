"""PNG figures for reports: confusion matrix, ROC, reliability, training curves, class counts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from cxr_model.labels import MULTICLASS, LabelSet  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(matrix, label_set: LabelSet, path: Path) -> None:
    matrix = np.asarray(matrix)
    if label_set.task == MULTICLASS:
        fig, ax = plt.subplots(figsize=(1.4 * len(label_set) + 2, 1.2 * len(label_set) + 1.5))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(label_set)), label_set.names, rotation=30, ha="right")
        ax.set_yticks(range(len(label_set)), label_set.names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        top = matrix.max() if matrix.size else 0
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
        ax.set_title("Confusion matrix")
    else:
        cols = 4
        rows = int(np.ceil(len(label_set) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
        for k, ax in enumerate(axes.ravel()):
            if k >= len(label_set):
                ax.axis("off")
                continue
            ax.imshow(matrix[k], cmap="Blues")
            for (i, j), value in np.ndenumerate(matrix[k]):
                ax.text(j, i, str(value), ha="center", va="center")
            ax.set_title(label_set.names[k], fontsize=9)
            ax.set_xticks([0, 1], ["neg", "pos"])
            ax.set_yticks([0, 1], ["neg", "pos"])
    _save(fig, path)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, label_set: LabelSet, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, name in enumerate(label_set.names):
        positives = (y_true == k) if label_set.task == MULTICLASS else y_true[:, k] == 1
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (one vs rest)")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_reliability(bins: list[dict], ece: float, path: Path, before: tuple[list[dict], float] | None = None) -> None:
    """Calibrated reliability bars; with ``before`` also the uncalibrated curve, for comparison."""
    fig, ax = plt.subplots(figsize=(5, 5))
    if before and before[0]:
        ax.plot(
            [b["confidence"] for b in before[0]],
            [b["accuracy"] for b in before[0]],
            "s-",
            color="tab:red",
            markersize=3,
            linewidth=1,
            label=f"before temperature scaling (ECE {before[1]:.3f})",
        )
    if bins:
        centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
        width = bins[0]["upper"] - bins[0]["lower"]
        ax.bar(centers, [b["accuracy"] for b in bins], width=width * 0.9, alpha=0.7, label="accuracy")
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o",
            color="black",
            markersize=3,
            label="mean confidence",
        )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def plot_training_curves(history: list[dict], path: Path) -> None:
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(1, len(history) + 1)
    loss_ax.plot(x, [h["train_loss"] for h in history], label="train loss")
    loss_ax.plot(x, [h["val_loss"] for h in history], label="val loss")
    metric_ax.plot(x, [h["val_accuracy"] for h in history], label="val accuracy")
    metric_ax.plot(x, [h["val_macro_f1"] for h in history], label="val macro-F1")
    boundary = sum(h["stage"] == "stage1" for h in history)
    for ax in (loss_ax, metric_ax):
        if 0 < boundary < len(history):
            ax.axvline(boundary + 0.5, color="grey", linestyle=":", label="stage 1 | stage 2")
        ax.set_xlabel("epoch (both stages)")
        ax.legend(fontsize=8)
    loss_ax.set_yscale("log")  # the stage-2 start-up spike would flatten everything else
    loss_ax.set_title("Loss (log scale)")
    metric_ax.set_title("Validation metrics")
    metric_ax.set_ylim(0, 1.02)
    _save(fig, path)


def plot_class_distribution(counts: dict[str, dict[str, int]], labels: list[str], path: Path) -> None:
    """``counts``: split (or "all") -> label -> images."""
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels)), 4))
    width = 0.8 / max(len(counts), 1)
    for i, (split, per_label) in enumerate(counts.items()):
        ax.bar(np.arange(len(labels)) + i * width, [per_label.get(n, 0) for n in labels], width, label=split)
    ax.set_xticks(np.arange(len(labels)) + width * (len(counts) - 1) / 2, labels, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.set_title("Class distribution")
    ax.legend()
    _save(fig, path)
