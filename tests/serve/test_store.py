"""ResultRepository against the real SecantusDB server (no Ray needed)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from bson import ObjectId

from serve.store import OrphanSweeper, ResultRepository, now

MODEL = {"name": "m", "version": "1", "weights_sha256": "ab" * 32, "preprocessing_version": "cxr-pre-1",
         "thresholds": [], "calibration_temperature": 1.3, "code_version": "0.1.0"}


def record(**overrides) -> dict:
    base = {"request_id": f"req-{uuid.uuid4().hex}", "patient_id": "ST-0001", "created_at": now(),
            "probabilities": {"Normal": 0.8, "COVID-19": 0.2}, "top_label": "Normal", "confidence": 0.8,
            "positives": ["Normal"], "model": MODEL}
    return {**base, **overrides}


@pytest.fixture
def repo(mongo_server):
    return ResultRepository(mongo_server.uri, f"store_{uuid.uuid4().hex[:8]}", timeout_ms=1500)


def test_save_then_read_back(repo):
    result = repo.save(record(), {"original": b"o", "annotated": b"a"})
    assert result == {"saved": True, "prediction_id": result["prediction_id"], "duplicate": False}
    assert repo.image(result["prediction_id"], "original") == b"o"
    assert repo.image(result["prediction_id"], "gradcam") is None
    assert repo.get(result["prediction_id"])["top_label"] == "Normal"


def test_schema_validator_refuses_a_bad_record_and_leaves_no_files(repo):
    result = repo.save(record(confidence=1.7), {"original": b"o", "annotated": b"a"})
    assert result["saved"] is False and "schema" in result["reason"]
    assert repo.db["predictions"].count_documents({}) == 0
    assert repo.db["images.files"].count_documents({}) == 0
    # A record without its provenance (which calibration produced these numbers?) is refused too.
    untraceable = {k: v for k, v in MODEL.items() if k != "calibration_temperature"}
    assert repo.save(record(model=untraceable), {"original": b"o", "annotated": b"a"})["saved"] is False
    assert repo.db["images.files"].count_documents({}) == 0


def test_racing_saves_of_one_request_keep_one_record_and_one_file_set(repo):
    shared = record()
    results = []
    threads = [threading.Thread(target=lambda: results.append(repo.save(dict(shared), {"original": b"o", "annotated": b"a"})))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r["prediction_id"] for r in results}) == 1
    assert repo.db["predictions"].count_documents({}) == 1
    assert repo.db["images.files"].count_documents({}) == 2


def test_unreachable_database_is_reported_not_claimed():
    repo = ResultRepository("mongodb://127.0.0.1:9/?directConnection=true", "nowhere", timeout_ms=300)
    result = repo.save(record(), {"original": b"o", "annotated": b"a"})
    assert result["saved"] is False and "database unavailable" in result["reason"]
    assert repo.ping() is False


def test_patient_query_values_are_literals(repo):
    repo.save(record(patient_id="ST-0002"), {"original": b"o", "annotated": b"a"})
    rows, total = repo.by_patient("ST-0002")
    assert total == 1 and rows[0]["patient_id"] == "ST-0002"
    assert repo.by_patient("$ne")[1] == 0


def _orphan(repo, owner: str, age: timedelta) -> ObjectId:
    """An image file as an interrupted save leaves it: uploaded, but its record never written."""
    file_id = repo.files.put(b"x" * 1000, filename=f"{owner}-original.png", metadata={"prediction_id": owner})
    repo.db["images.files"].update_one({"_id": file_id}, {"$set": {"uploadDate": now() - age}})
    return file_id


def test_orphan_sweep_removes_unreferenced_files_and_chunks_past_the_grace_period(repo):
    kept = repo.save(record(), {"original": b"o", "annotated": b"a"})
    repo.db["images.files"].update_many({}, {"$set": {"uploadDate": now() - timedelta(hours=2)}})
    old = _orphan(repo, "interrupted-1", timedelta(hours=1))
    fresh = _orphan(repo, "maybe-still-saving", timedelta(seconds=5))
    # A put cut short before its file document: chunks only.
    lost = ObjectId()
    repo.db["images.chunks"].insert_one({"_id": ObjectId.from_datetime(now() - timedelta(hours=1)),
                                         "files_id": lost, "n": 0, "data": b"y" * 100})
    result = repo.sweep_orphans(timedelta(minutes=10))
    assert (result["files"], result["chunks"]) == (1, 1)
    remaining = {doc["_id"] for doc in repo.db["images.files"].find({}, {"_id": 1})}
    assert old not in remaining and fresh in remaining and len(remaining) == 3
    assert repo.db["images.chunks"].count_documents({"files_id": {"$in": [old, lost]}}) == 0
    # The stored record is whole: both of its files still read back.
    assert repo.image(kept["prediction_id"], "original") == b"o"
    assert repo.image(kept["prediction_id"], "annotated") == b"a"
    # The next pass starts where this one stopped and finds nothing new to remove.
    again = repo.sweep_orphans(timedelta(minutes=10), since=result["cutoff"])
    assert (again["files"], again["chunks"]) == (0, 0)


def test_background_sweeper_removes_orphans_and_reports_them(repo):
    repo.ensure_schema()
    orphan = _orphan(repo, "interrupted-2", timedelta(minutes=1))
    reports = []
    sweeper = OrphanSweeper(repo, interval_s=0.2, grace_s=30, on_swept=reports.append)
    sweeper.start()
    try:
        deadline = time.monotonic() + 30
        while repo.db["images.files"].count_documents({"_id": orphan}) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        sweeper.stop()
        sweeper.join(timeout=10)
    assert repo.db["images.files"].count_documents({"_id": orphan}) == 0
    assert any(r["files"] == 1 for r in reports)


def test_sweep_waits_out_a_database_outage():
    repo = ResultRepository("mongodb://127.0.0.1:9/?directConnection=true", "nowhere", timeout_ms=200)
    sweeper = OrphanSweeper(repo, interval_s=60, grace_s=60)
    assert sweeper.sweep_once() is None and sweeper.since is None  # the same window is tried again later
