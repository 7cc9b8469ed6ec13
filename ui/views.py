"""Rendering for the clinician pages: one Jinja2 environment, view helpers, no Ray.

``serve`` owns the routes and the data; this module turns plain dicts into
HTML. Every page has a full-document template and, where htmx swaps part of
it, a partial (``_*.html``) that the full page includes, so the two can never
drift apart.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime, timedelta
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from cxr_model.annotate import probability_text

UI_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"
HTMX_FILE = "htmx-2.0.11.min.js"
HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"

# Errors are rendered next to these fields (the rest go to the summary above the result).
FORM_FIELDS = ("patient_id", "image")

# API error codes in the words a clinician reads next to the field; unknown codes keep the API text.
FIELD_MESSAGES = {
    "missing_patient_id": "Enter the patient ID (a DICOM file's own Patient ID is used when left empty).",
    "bad_patient_id": "Use only letters, digits, '.', '_' or '-' in the patient ID (up to 64, starting with a "
    "letter or digit).",
    "missing_image": "Choose the chest X-ray image file.",
    "not_an_image": "This file is not a PNG, JPEG or DICOM image. Choose the X-ray image file.",
    "empty": "This file is empty. Choose the X-ray image file.",
    "truncated": "This image file is incomplete (truncated). Export it again and retry.",
    "trailing_data": "This file carries extra data after the image (damaged, or another file hidden in it). "
    "Export the image again and retry.",
    "too_large": "This file is larger than the upload limit.",
    "too_many_pixels": "This image has more pixels than the service accepts.",
    "dicom_no_pixels": "This DICOM file holds no image.",
    "dicom_modality": "This DICOM file is not a radiograph (CR or DX).",
    "dicom_not_chest": "The DICOM header names another body part, not the chest.",
    "dicom_not_frontal": "The DICOM header names a lateral or oblique view; only frontal (PA or AP) films are read.",
    "dicom_unsupported_syntax": "This DICOM file's compression cannot be decoded here. Export it uncompressed.",
    "dicom_not_greyscale": "This DICOM image is not greyscale.",
    "patient_id_mismatch": "This DICOM file names another Patient ID. Check the patient; to use the typed ID, "
    "tick 'Confirm the typed ID' and predict again.",
    "dicom_inconsistent": "This DICOM image is not the size its header says. Export it again.",
}


def field_messages(errors) -> dict[str, str]:
    """(field, code, text) triples -> the first message per field, in clinician wording."""
    out: dict[str, str] = {}
    for field, code, text in errors:
        out.setdefault(field or "form", FIELD_MESSAGES.get(code, text))
    return out


def is_htmx(headers) -> bool:
    """True for an htmx request that wants a fragment (not a history restore, which wants a page)."""
    return headers.get("hx-request") == "true" and headers.get("hx-history-restore-request") != "true"


def percent(value: float | None, digits: int = 1) -> str:
    """A rate or a measured figure (accuracy, a miss rate): 100.0% and 0.0% mean what they say."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * 100:.{digits}f}%"


def probability(value: float | None, digits: int = 1) -> str:
    """A model's probability: ">99.9%" / "<0.1%" at the ends, never a certainty it does not have."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return probability_text(value, digits)


def when(value) -> str:
    """Timestamps as the clinician reads them: ISO date and minutes, UTC stated."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def duration(value: timedelta) -> str:
    """A wait as a reader says it: "45 min", "3 h 05 min", "2 d 4 h"."""
    minutes = int(value.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 24 * 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes // (24 * 60)} d {minutes % (24 * 60) // 60} h"


def short_hash(value: str | None, length: int = 12) -> str:
    return value[:length] if value else "-"


def data_uri(png: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(png).decode('ascii')}"


def probability_rows(
    probabilities: dict, labels: list[str], thresholds: list[float] | None = None, positives: list[str] | None = None
) -> list[dict]:
    """One row per label, in the model's label order, for the confidence bars."""
    thresholds = list(thresholds or [])
    rows = []
    for i, label in enumerate(labels):
        rows.append(
            {
                "label": label,
                "probability": float(probabilities.get(label, 0.0)),
                "threshold": thresholds[i] if i < len(thresholds) else None,
                "positive": label in (positives or []),
            }
        )
    return rows


def card_summary(model: dict) -> list[tuple[str, str]]:
    """The model fields a reviewer needs beside a result (name, version, provenance)."""
    fields = [
        ("Model", model.get("name")),
        ("Version", model.get("version")),
        ("Backbone", model.get("backbone")),
        ("Task", model.get("task")),
        ("Weights sha256", short_hash(model.get("weights_sha256"))),
        ("Preprocessing", model.get("preprocessing_version")),
        (
            "Calibration temperature",
            f"{model['calibration_temperature']:.3f}" if model.get("calibration_temperature") is not None else None,
        ),
        ("Thresholds", ", ".join(f"{t:.2f}" for t in model["thresholds"]) if model.get("thresholds") else None),
        ("Code version", model.get("code_version")),
        ("Runtime", model.get("runtime")),
    ]
    return [(k, str(v)) for k, v in fields if v]


DICOM_NAMES = (
    ("accession_number", "Accession Number"),
    ("study_instance_uid", "Study Instance UID"),
    ("series_instance_uid", "Series Instance UID"),
    ("sop_instance_uid", "SOP Instance UID"),
    ("modality", "Modality"),
    ("body_part_examined", "Body Part Examined"),
    ("view_position", "View Position"),
    ("sending_application_entity_title", "Sending AE Title"),
)


def dicom_rows(dicom: dict | None) -> list[tuple[str, str]]:
    """A record's DICOM identifiers under their DICOM attribute names, as a PACS administrator knows them."""
    return [(name, dicom[key]) for key, name in DICOM_NAMES if (dicom or {}).get(key)]


def headline_metrics(metrics: dict) -> list[tuple[str, str]]:
    """Test-split figures from a model card's metrics, with 95% CIs where recorded."""
    test = metrics.get("test") or {}
    rows = []
    for key, name in (
        ("accuracy", "Accuracy"),
        ("macro_f1", "Macro F1"),
        ("macro_roc_auc", "Macro ROC-AUC"),
        ("ece", "Expected calibration error"),
    ):
        if key in test:
            text = percent(test[key]) if key != "ece" else f"{test[key]:.3f}"
            ci = test.get(f"{key}_ci95")
            if ci and len(ci) == 2:
                text += f" (95% CI {percent(ci[0])} - {percent(ci[1])})"
            rows.append((name, text))
    if "n" in test:
        rows.append(("Test images", str(test["n"])))
    return rows


def scope_rates(scope: dict) -> list[tuple[str, str, str]]:
    """The out-of-scope gate's measured rates from a model card: (pictures, refused, rate) rows."""
    rates = (scope or {}).get("rates") or {}
    rows = [
        (f"Chest radiographs, {split} split", f"{row['refused']} of {row['n']}",
         f"false rejection {percent(row['false_rejection_rate'])}")
        for split, row in (rates.get("chest_radiographs") or {}).items()
    ]  # fmt: skip
    rows += [
        (kind.replace("_", " ").capitalize(), f"{row['refused']} of {row['n']}", f"missed {percent(row['miss_rate'])}")
        for kind, row in (rates.get("out_of_scope") or {}).items()
    ]
    return rows


class PageRenderer:
    """Renders templates with the globals every page needs (notice, htmx file, demo flag)."""

    def __init__(self, notice: str, demo_notice: str):
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATE_DIR),
            autoescape=select_autoescape(default=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            percent=percent, probability=probability, duration=duration, when=when, short_hash=short_hash
        )
        self.env.globals.update(
            notice=notice,
            demo_notice=demo_notice,
            htmx_file=HTMX_FILE,
            fields=FORM_FIELDS,
            probability_rows=probability_rows,
            card_summary=card_summary,
            dicom_rows=dicom_rows,
        )

    def render(self, template: str, **context) -> str:
        context.setdefault("synthetic_demo", False)
        return self.env.get_template(template).render(**context)
