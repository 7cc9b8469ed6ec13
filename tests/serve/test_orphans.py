"""The orphan sweep against the real SecantusDB server (no Ray needed)."""

from __future__ import annotations

import time
from datetime import timedelta

from bson import ObjectId

from serve.orphans import OrphanSweeper, sweep_orphans
from serve.records import PredictionRecords, now
from tests.serve.helpers import stored_record as record


def _orphan(records, owner: str, age: timedelta) -> ObjectId:
    """An image file as an interrupted save leaves it: uploaded, but its record never written."""
    file_id = records.files.put(b"x" * 1000, filename=f"{owner}-original.png", metadata={"prediction_id": owner})
    records.db["images.files"].update_one({"_id": file_id}, {"$set": {"uploadDate": now() - age}})
    return file_id


def test_orphan_sweep_removes_unreferenced_files_and_chunks_past_the_grace_period(records):
    kept = records.save(record(), {"original": b"o", "annotated": b"a"})
    records.db["images.files"].update_many({}, {"$set": {"uploadDate": now() - timedelta(hours=2)}})
    old = _orphan(records, "interrupted-1", timedelta(hours=1))
    fresh = _orphan(records, "maybe-still-saving", timedelta(seconds=5))
    # A put cut short before its file document: chunks only.
    lost = ObjectId()
    records.db["images.chunks"].insert_one(
        {"_id": ObjectId.from_datetime(now() - timedelta(hours=1)), "files_id": lost, "n": 0, "data": b"y" * 100}
    )
    result = sweep_orphans(records, timedelta(minutes=10))
    assert (result.files, result.chunks) == (1, 1)
    remaining = {doc["_id"] for doc in records.db["images.files"].find({}, {"_id": 1})}
    assert old not in remaining and fresh in remaining and len(remaining) == 3
    assert records.db["images.chunks"].count_documents({"files_id": {"$in": [old, lost]}}) == 0
    # The stored record is whole: both of its files still read back.
    assert records.image(kept.prediction_id, "original") == b"o"
    assert records.image(kept.prediction_id, "annotated") == b"a"
    # The next pass starts where this one stopped and finds nothing new to remove.
    again = sweep_orphans(records, timedelta(minutes=10), since=result.cutoff)
    assert (again.files, again.chunks) == (0, 0)


def test_background_sweeper_removes_orphans_and_recordsrts_them(records):
    records.ensure_schema()
    orphan = _orphan(records, "interrupted-2", timedelta(minutes=1))
    recordsrts = []
    sweeper = OrphanSweeper(records, interval_s=0.2, grace_s=30, on_swept=recordsrts.append)
    sweeper.start()
    try:
        deadline = time.monotonic() + 30
        while records.db["images.files"].count_documents({"_id": orphan}) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        sweeper.stop()
        sweeper.join(timeout=10)
    assert records.db["images.files"].count_documents({"_id": orphan}) == 0
    assert any(r.files == 1 for r in recordsrts)


def test_sweep_waits_out_a_database_outage():
    records = PredictionRecords("mongodb://127.0.0.1:9/?directConnection=true", "nowhere", timeout_ms=200)
    sweeper = OrphanSweeper(records, interval_s=60, grace_s=60)
    assert sweeper.sweep_once() is None and sweeper.since is None  # the same window is tried again later
