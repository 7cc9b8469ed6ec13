"""MODEL_CARD.md from a checkpoint's model card: what a clinician, an auditor or a buyer reads.

Written beside every trained checkpoint and on demand with ``cxr model-card CHECKPOINT``.
"""

from __future__ import annotations

from cxr_model.checkpoint import ModelCard
from cxr_model.labels import MULTICLASS

KNOWN_LIMITS = [
    "Decision support only, not for diagnostic use. A clinician reads every image; the model's "
    "output never replaces that reading.",
    "In the public COVID-19 Radiography Database each class comes largely from different source "
    "hospitals and datasets. A model can learn the source (scanner, text markers, borders, "
    "paediatric vs adult) instead of the disease: a shortcut. High test scores on a split of the "
    "same data do not show that it generalises. Validate on your own hospital's images first "
    "(`cxr evaluate --data-dir ...`).",
    "Trained on frontal (PA/AP) chest radiographs. Lateral views, other body parts, CT slices and "
    "photographs are outside its scope; the out-of-scope gate refuses most of them, not all.",
    "Probabilities are calibrated (temperature scaling) on the validation split of the training "
    "data. Calibration does not carry over to a different population or scanner without refitting.",
    "Predictions below the low-confidence bar are flagged in the API, the pages and the stored "
    "record. Treat them as no answer.",
]


def _pct(value) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _ci(values) -> str:
    return f" (95% CI {_pct(values[0])} - {_pct(values[1])})" if values and len(values) == 2 else ""


def _scope_section(card: ModelCard) -> list[str]:
    scope = card.scope or {}
    lines = ["", "## Out-of-scope gate", ""]
    if not scope.get("feature_gate"):
        return lines + [
            "Only the image checks run (colour, blank, noise): no feature gate was fitted for this "
            "checkpoint, so other body parts or views can still receive a label."
        ]
    gate, rates = scope["feature_gate"], scope.get("rates", {})
    lines += [
        scope.get("method", ""),
        "",
        f"- Feature gate: distance threshold {gate['threshold']:.1f} over {gate['feature_dim']} features, "
        f"fitted on the {gate['fitted_on']}, threshold from the {gate['threshold_from']} "
        f"(target false rejection {_pct(gate['target_false_rejection'])}).",
    ]
    if scope.get("layout_gate"):
        layout = scope["layout_gate"]
        lines.append(
            f"- Layout gate: distance threshold {layout['threshold']:.1f} over {layout['feature_dim']} layout "
            f"values, fitted on the {layout['fitted_on']}, threshold from the {layout['threshold_from']}."
        )
    lines += [
        '- An image the gate refuses gets no label: the answer is "out of scope" with the reason.',
        "",
        "| images | n | refused | rate |",
        "|---|---|---|---|",
    ]
    for split, row in (rates.get("chest_radiographs") or {}).items():
        lines.append(
            f"| chest radiographs, {split} split | {row['n']} | {row['refused']} | "
            f"false rejection {_pct(row['false_rejection_rate'])} |"
        )
    for kind, row in (rates.get("out_of_scope") or {}).items():
        caught = ", ".join(f"{reason} {count}" for reason, count in row["refused_by"].items()) or "none"
        lines.append(
            f"| {kind.replace('_', ' ')} | {row['n']} | {row['refused']} ({caught}) | miss {_pct(row['miss_rate'])} |"
        )
    sources = {kind: row["source"] for kind, row in (rates.get("out_of_scope") or {}).items() if row.get("source")}
    if sources:
        lines += ["", "Sources of the out-of-scope pictures:"] + [
            f"- {k.replace('_', ' ')}: {v}" for k, v in sources.items()
        ]
    if rates.get("out_of_scope_source"):
        lines += [
            "",
            f"Out-of-scope pictures: {rates['out_of_scope_source']}. Measure the gate on your own "
            "site's images before relying on these rates.",
        ]
    return lines


def render_model_card(card: ModelCard) -> str:
    spec = card.preprocess_spec
    test = card.metrics.get("test") or {}
    calibration = card.metrics.get("calibration") or {}
    lines = [f"# Model card: {card.name} {card.version}", ""]
    if card.synthetic_demo:
        lines += [
            "> **SYNTHETIC DEMO MODEL.** Trained on generated images only; its figures say nothing "
            "about clinical performance. Not for clinical use.",
            "",
        ]
    lines += [
        "## Intended use",
        "",
        card.intended_use,
        "",
        "## Model",
        "",
        f"- Backbone: torchvision `{card.backbone}` with a new classification head.",
        f"- Task: {'single label (softmax)' if card.task == MULTICLASS else 'multi-label (sigmoid)'} over "
        f"{len(card.labels)} labels: {', '.join(card.labels)}.",
        f"- Input: {spec.input_size} x {spec.input_size} px grey levels replicated to 3 channels, ImageNet "
        f"mean/std, preprocessing `{spec.version}`. PNG, JPEG and DICOM (CR/DX) are accepted.",
        f"- Calibration temperature: {card.calibration_temperature:.3f}; low-confidence bar: top "
        f"probability below {_pct(card.low_confidence_below)}.",
    ]
    if card.thresholds:
        pairs = ", ".join(f"{n} {t:.2f}" for n, t in zip(card.labels, card.thresholds))
        lines.append(f"- Per-label thresholds: {pairs}.")
    lines += [
        "",
        "## Data",
        "",
        f"- Training data manifest sha256: `{card.data_manifest_sha256 or 'n/a'}` (every file's sha256 and "
        f"split are in `split_manifest.json` of the training run).",
        f"- Split seed: {card.split_seed}; stratified, deterministic; byte-identical images never straddle splits.",
        "",
        "## Performance (held-out test split)",
        "",
    ]
    if test:
        lines += [
            f"- Images: {test.get('n', 'n/a')}",
            f"- Accuracy: {_pct(test.get('accuracy'))}{_ci(test.get('accuracy_ci95'))}",
            f"- Macro F1: {_pct(test.get('macro_f1'))}{_ci(test.get('macro_f1_ci95'))}",
            f"- Macro ROC-AUC: {_pct(test.get('macro_roc_auc'))}",
        ]
        if "ece" in test:
            before = test.get("ece_before_calibration")
            lines.append(
                f"- Expected calibration error: {test['ece']:.3f}"
                + (f" (before temperature scaling: {before:.3f})" if before is not None else "")
            )
        if "low_confidence_rate" in test:
            lines.append(f"- Flagged low confidence: {_pct(test['low_confidence_rate'])} of test images")
    else:
        lines.append("No test metrics are recorded in this card.")
    if calibration:
        lines += [
            "",
            f"Calibration: {calibration.get('method', 'temperature scaling')}, T = "
            f"{calibration.get('temperature', card.calibration_temperature):.3f}; validation ECE "
            f"{calibration.get('val_ece_before', float('nan')):.3f} before, "
            f"{calibration.get('val_ece_after', float('nan')):.3f} after.",
        ]
    lines += _scope_section(card)
    lines += ["", "## Known limits", ""] + [f"- {item}" for item in KNOWN_LIMITS]
    lines += [
        "",
        "## Traceability",
        "",
        f"- Weights sha256: `{card.weights_sha256}`",
        f"- Code version: `{card.code_version or 'n/a'}`",
        f"- Created: {card.created_at or 'n/a'}",
        "- Every stored prediction records the model name, version, weights sha256, preprocessing "
        "version, thresholds, calibration temperature and code version.",
        "",
    ]
    return "\n".join(lines)
