"""PredictionRecords against the real SecantusDB server (no Ray needed)."""

from __future__ import annotations

import threading

import pytest

from serve.records import PredictionRecords, SaveResult
from tests.serve.helpers import MODEL
from tests.serve.helpers import stored_record as record


def test_save_then_read_back(records):
    result = records.save(record(), {"original": b"o", "annotated": b"a"})
    assert result == SaveResult(True, result.prediction_id)
    assert records.image(result.prediction_id, "original") == b"o"
    assert records.image(result.prediction_id, "gradcam") is None
    assert records.get(result.prediction_id)["top_label"] == "Normal"


def test_schema_validator_refuses_a_bad_record_and_leaves_no_files(records):
    result = records.save(record(confidence=1.7), {"original": b"o", "annotated": b"a"})
    assert result.saved is False and "schema" in result.reason
    assert records.db["predictions"].count_documents({}) == 0
    assert records.db["images.files"].count_documents({}) == 0
    # A record without its provenance (which calibration produced these numbers?) is refused too.
    untraceable = {k: v for k, v in MODEL.items() if k != "calibration_temperature"}
    assert records.save(record(model=untraceable), {"original": b"o", "annotated": b"a"}).saved is False
    assert records.db["images.files"].count_documents({}) == 0


def test_racing_saves_of_one_request_keep_one_record_and_one_file_set(records):
    shared = record()
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(records.save(dict(shared), {"original": b"o", "annotated": b"a"}))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.prediction_id for r in results}) == 1
    assert records.db["predictions"].count_documents({}) == 1
    assert records.db["images.files"].count_documents({}) == 2


def test_unreachable_database_is_reported_not_claimed():
    records = PredictionRecords("mongodb://127.0.0.1:9/?directConnection=true", "nowhere", timeout_ms=300)
    result = records.save(record(), {"original": b"o", "annotated": b"a"})
    assert result.saved is False and "database unavailable" in result.reason
    assert records.ping() is False


def test_patient_query_values_are_literals(records):
    records.save(record(patient_id="ST-0002"), {"original": b"o", "annotated": b"a"})
    rows, total = records.by_patient("ST-0002")
    assert total == 1 and rows[0]["patient_id"] == "ST-0002"
    assert records.by_patient("$ne")[1] == 0


def _refuse_big_image_files(records) -> None:
    """The database itself refuses image file documents over 1 KB, after their chunks are written."""
    records.db.create_collection(
        "images.files",
        validator={
            "$jsonSchema": {
                "bsonType": "object",
                "properties": {"length": {"bsonType": ["int", "long"], "maximum": 1000}},
            }
        },
    )


@pytest.mark.parametrize("refused", ["the second image's file document", "the record"])
def test_a_write_the_database_refuses_leaves_no_record_no_files_and_no_chunks(records, refused):
    images = {"original": b"o" * 500, "annotated": b"a" * 5000}
    if refused == "the record":
        result = records.save(record(confidence=1.7), images)  # out of the schema's range
    else:
        _refuse_big_image_files(records)
        result = records.save(record(), images)
    assert result.saved is False and result.prediction_id is None and result.reason
    assert records.db["predictions"].count_documents({}) == 0
    assert records.db["images.files"].count_documents({}) == 0
    assert records.db["images.chunks"].count_documents({}) == 0


def test_a_request_id_is_the_caller_s_idempotency_key(records):
    images = {"original": b"o", "annotated": b"a"}
    first = records.save(record(request_id="shared-key-0001"), images)
    assert first.saved and not first.duplicate
    # A true retry by the same caller returns the first result and stores nothing new.
    retry = records.save(record(request_id="shared-key-0001"), images)
    assert retry.saved and retry.duplicate and retry.prediction_id == first.prediction_id
    # The same caller's key for another patient: refused, nothing stored.
    other = record(request_id="shared-key-0001", patient_id="ST-0999")
    reused = records.save(other, images)
    assert reused.key_reused and not reused.saved and reused.prediction_id is None
    # Another caller's numbering may use the same key: its own record, not the first caller's.
    theirs = records.save(record(request_id="shared-key-0001", created_by_key="k-ward-9", patient_id="ST-0999"), images)
    assert theirs.saved and not theirs.duplicate and theirs.prediction_id != first.prediction_id
    assert records.db["predictions"].count_documents({}) == 2 and records.db["images.files"].count_documents({}) == 4
