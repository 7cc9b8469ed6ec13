"""``ArchiveRecords``: ``cxr score --save`` writes each scored file as the service records a save.

The same collection, schema and GridFS bucket (``serve.records``), so the
pages and the API show archive scores beside uploaded ones. The request id is
derived from the file's content and the model's weights, under one caller
(``archive-scoring``): scoring the same archive again with the same model
stores nothing new, and a new model version stores new records.
"""

from __future__ import annotations

from cxr_model.dicom import header_patient_id
from cxr_model.formats import sniff_format
from serve.inputs import PATIENT_ID
from serve.model_results import ModelInfo
from serve.records import PredictionRecords, now, request_fingerprint

CALLER = "archive-scoring"


def archive_request_id(weights_sha256: str, file_sha256: str) -> str:
    return f"archive:{weights_sha256[:16]}:{file_sha256}"


class ArchiveRecords:
    def __init__(self, uri: str, database: str, timeout_ms: int = 3000):
        self.records = PredictionRecords(uri, database, timeout_ms)

    def save(self, row: dict, data: bytes, engine, patient_id: str = "") -> tuple[bool, str]:
        """(saved, why not); a record needs a patient ID: the manifest's, else the DICOM header's."""
        if not patient_id and sniff_format(data) == "dicom":
            patient_id = (header_patient_id(data) or "").strip()
        if not patient_id or not PATIENT_ID.fullmatch(patient_id):
            return False, "no valid patient ID (give a patient_id column in the manifest, or use DICOM files)"
        card = engine.card
        record = {
            "request_id": archive_request_id(card.weights_sha256, row["sha256"]),
            "patient_id": patient_id,
            "probabilities": {label: row[f"p_{label}"] for label in card.labels},
            "top_label": row["top_label"],
            "confidence": row["confidence"],
            "positives": row["positives"],
            "low_confidence": row["low_confidence"],
            "model": ModelInfo.from_card(card, engine.runtime, engine.precision).to_dict(),
            "created_at": now(),
            "created_by": "cxr score",
            "created_by_key": CALLER,
            "request_fingerprint": request_fingerprint(patient_id, data),
            "source": {"kind": "archive", "path": row["path"]},
        }
        result = self.records.save(record, {"original": data})
        return result.saved, result.reason or ""
