"""``cxr evaluate``: a checkpoint against a split or a folder, as files a reviewer can read.

Writes ``report.json``, ``report.md``, ``per_class.csv``, ``predictions.csv``,
``confusion_matrix.png``, ``roc.png`` and ``reliability.png`` (calibration,
with its ECE); accuracy and macro-F1 carry 95% bootstrap confidence intervals.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxr_model.classifier import Classifier, load_checkpoint, low_confidence, probabilities_from_logits
from cxr_model.labels import MULTICLASS, LabelSet
from training.dataset import ManifestDataset
from training.metrics import accuracy, bootstrap_ci, classification_metrics, macro_f1, predict_labels
from training.plots import plot_confusion_matrix, plot_reliability, plot_roc


def predict_entries(
    model, card, root: Path, entries: list[dict], batch_size: int = 32, loader_workers: int = 2, logits: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (or raw logits) and encoded targets for manifest entries, through the shared
    preprocessing."""
    classifier = model if isinstance(model, Classifier) else Classifier(model, card)
    loader = DataLoader(
        ManifestDataset(root, entries, card.label_set, card.preprocess_spec),
        batch_size=batch_size,
        num_workers=loader_workers,
    )
    probs, targets = [], []
    for x, y in loader:
        probs.append(classifier.predict_logits(x).numpy() if logits else classifier.predict_batch(x))
        targets.append(y.numpy())
    return np.concatenate(probs), np.concatenate(targets)


def build_report(
    y_true: np.ndarray, probs: np.ndarray, label_set: LabelSet, n_resamples: int = 1000, seed: int = 0
) -> dict:
    report = classification_metrics(y_true, probs, label_set)
    report["labels"] = list(label_set.names)
    report["task"] = label_set.task
    report["accuracy_ci95"] = bootstrap_ci(y_true, probs, label_set, accuracy, n_resamples, seed)
    report["macro_f1_ci95"] = bootstrap_ci(y_true, probs, label_set, macro_f1, n_resamples, seed)
    return report


def _label_names(row, label_set: LabelSet) -> list[str]:
    if label_set.task == MULTICLASS:
        return [label_set.names[int(row)]]
    return [name for name, hit in zip(label_set.names, row) if hit]


def _write_markdown(path: Path, report: dict) -> None:
    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        f"# Evaluation: {report['model']['name']} {report['model']['version']}",
        "",
        f"Split: **{report['split']}**, {report['n']} images. Task: {report['task']}.",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
        f"| accuracy | {fmt(report['accuracy'])} | "
        f"{fmt(report['accuracy_ci95'][0])} - {fmt(report['accuracy_ci95'][1])} |",
        f"| macro-F1 | {fmt(report['macro_f1'])} | "
        f"{fmt(report['macro_f1_ci95'][0])} - {fmt(report['macro_f1_ci95'][1])} |",
        f"| macro ROC-AUC | {fmt(report['macro_roc_auc'])} | |",
        f"| ECE (15 bins), calibrated | {fmt(report['ece'])} | |",
        f"| ECE (15 bins), before temperature scaling | {fmt(report['calibration']['ece_before'])} | |",
        f"| flagged low confidence | {fmt(report['low_confidence_rate'])} | |",
        "",
        f"Temperature scaling: T = {report['calibration']['temperature']:.3f}, fitted on the validation split.",
        "",
        "| label | precision | recall | F1 | support | ROC-AUC |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["per_class"].items():
        lines.append(
            f"| {name} | {fmt(row['precision'])} | {fmt(row['recall'])} | {fmt(row['f1'])} | "
            f"{row['support']} | {fmt(row['roc_auc'])} |"
        )
    lines += [
        "",
        "Figures: `confusion_matrix.png`, `roc.png`, `reliability.png`.",
        "Per-image results: `predictions.csv`.",
        "",
    ]
    if report["model"].get("synthetic_demo"):
        lines.insert(
            2,
            "> SYNTHETIC DEMO MODEL evaluated on generated images: these numbers say nothing "
            "about clinical performance.\n",
        )
    path.write_text("\n".join(lines))


def write_report(
    out_dir: Path, report: dict, entries: list[dict], probs: np.ndarray, y_true: np.ndarray, label_set: LabelSet
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    _write_markdown(out_dir / "report.md", report)
    with open(out_dir / "per_class.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "precision", "recall", "f1", "support", "roc_auc"])
        for name, row in report["per_class"].items():
            writer.writerow(
                [
                    name,
                    row["precision"],
                    row["recall"],
                    row["f1"],
                    row["support"],
                    "" if row["roc_auc"] is None else row["roc_auc"],
                ]
            )
    y_pred = predict_labels(probs, label_set)
    with open(out_dir / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "correct", *[f"p_{n}" for n in label_set.names]])
        for entry, truth, pred, row in zip(entries, y_true, y_pred, probs):
            true_names, pred_names = _label_names(truth, label_set), _label_names(pred, label_set)
            writer.writerow(
                [
                    entry["path"],
                    "|".join(true_names),
                    "|".join(pred_names),
                    int(true_names == pred_names),
                    *[f"{p:.6f}" for p in row],
                ]
            )
    plot_confusion_matrix(report["confusion_matrix"], label_set, out_dir / "confusion_matrix.png")
    plot_roc(y_true, probs, label_set, out_dir / "roc.png")
    calibration = report["calibration"]
    plot_reliability(
        report["calibration_bins"],
        report["ece"],
        out_dir / "reliability.png",
        before=(calibration["bins_before"], calibration["ece_before"]),
    )


def evaluate_checkpoint(
    checkpoint: str | Path,
    root: Path,
    entries: list[dict],
    out_dir: str | Path,
    batch_size: int = 32,
    split_name: str = "test",
    n_resamples: int = 1000,
) -> dict:
    classifier = load_checkpoint(checkpoint)
    card = classifier.card
    with torch.inference_mode():
        logits, y_true = predict_entries(classifier, card, root, entries, batch_size, logits=True)
    scores = torch.from_numpy(logits)
    probs = probabilities_from_logits(scores, card.task, card.calibration_temperature).numpy()
    before = classification_metrics(y_true, probabilities_from_logits(scores, card.task).numpy(), card.label_set)
    report = build_report(y_true, probs, card.label_set, n_resamples)
    report["calibration"] = {
        "temperature": card.calibration_temperature,
        "ece_before": before["ece"],
        "ece_after": report["ece"],
        "bins_before": before["calibration_bins"],
    }
    report["low_confidence_rate"] = float(np.mean([low_confidence(row, card) for row in probs])) if len(probs) else 0.0
    report["split"] = split_name
    report["model"] = {
        "name": card.name,
        "version": card.version,
        "weights_sha256": card.weights_sha256,
        "preprocessing_version": card.preprocess_spec.version,
        "synthetic_demo": card.synthetic_demo,
    }
    write_report(Path(out_dir), report, entries, probs, y_true, card.label_set)
    return report
