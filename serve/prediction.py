"""``Prediction``: one checked request and the model's answer to it, as the API shows it and as
a record stores it. Drawing its images is ``serve.images``' job."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serve.errors import InputError
from serve.identity import Identity
from serve.inputs import PredictionRequest
from serve.model_results import ModelOutput
from serve.records import now, request_fingerprint


@dataclass
class Prediction:
    request: PredictionRequest
    output: ModelOutput
    timings_ms: dict = field(default_factory=dict)
    heatmap: np.ndarray | None = None  # Grad-CAM, when asked for
    gradcam_label: str | None = None

    @property
    def probabilities(self) -> dict[str, float]:
        return self.output.by_label()

    @property
    def top_label(self) -> str:
        probabilities = self.probabilities
        return max(probabilities, key=probabilities.get)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.top_label]

    @property
    def model(self) -> dict:
        return self.output.model.to_dict()

    def _result(self) -> dict:
        return {
            "request_id": self.request.request_id,
            "patient_id": self.request.patient_id,
            "probabilities": self.probabilities,
            "top_label": self.top_label,
            "confidence": self.confidence,
            "positives": self.output.positives,
            "low_confidence": self.output.low_confidence,
            "model": self.model,
        }

    def record(self, actor: Identity) -> dict:
        """The stored record, without its files (the store adds those)."""
        return self._result() | {"status": ANALYSED} | provenance(self.request, actor)

    def api_body(self) -> dict:
        body = self._result() | {"batch_size": self.output.batch_size, "saved": False, "prediction_id": None}
        if self.gradcam_label is not None:
            body["gradcam_label"] = self.gradcam_label
        return body


ANALYSED, NOT_ANALYSED = "analysed", "not_analysed"  # a record's status; records before it are analysed


def provenance(request: PredictionRequest, actor: Identity) -> dict:
    """What every record carries: who sent what, when, and a DICOM instance's identifiers."""
    dicom = {"dicom": request.dicom.to_dict()} if request.dicom else {}
    return {
        "request_id": request.request_id,
        "patient_id": request.patient_id,
        "created_at": now(),
        "created_by": actor.name,
        "created_by_key": actor.owner,
        "request_fingerprint": request_fingerprint(request.patient_id, request.data),
    } | dicom


def not_analysed_record(request: PredictionRequest, error: InputError, actor: Identity) -> dict:
    """A received instance the model did not read: no probabilities, only the reason."""
    reason = {"code": error.code, "message": str(error)} | (
        {"reason": error.details["reason"]} if "reason" in error.details else {}
    )
    return {"status": NOT_ANALYSED, "not_analysed": reason} | provenance(request, actor)


INTERNAL_FIELDS = ("_id", "files", "created_by_key", "request_fingerprint", "results_leased_until")


def public_record(record: dict) -> dict:
    """A stored record as the API shows it: ids as strings, dates as ISO 8601."""
    out = {k: v for k, v in record.items() if k not in INTERNAL_FIELDS}
    out["prediction_id"] = record["_id"]
    out["created_at"] = record["created_at"].isoformat()
    out["status"] = record.get("status", ANALYSED)
    if "review" in record:  # the current radiologist review (serve.reviews)
        out["review"] = record["review"] | {"at": record["review"]["at"].isoformat()}
    if "reading" in record:  # a radiologist's claim; past "until" it has lapsed
        out["reading"] = {"by": record["reading"]["by"], "until": record["reading"]["until"].isoformat()}
    out["images"] = {kind: f"/api/v1/predictions/{record['_id']}/image?kind={kind}" for kind in view_kinds(record)}
    return out


def view_kinds(record: dict) -> list[str]:
    """The pictures a record can be shown as: the original, annotated, and Grad-CAM when it was asked for.
    A record not analysed has none: its file is kept as received, and may not even be decodable."""
    if record.get("status") == NOT_ANALYSED:
        return []
    files = record["files"]
    return ["original", "annotated"] + (["gradcam"] if "heatmap" in files or "gradcam" in files else [])
