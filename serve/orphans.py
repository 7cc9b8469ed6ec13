"""The orphan sweep: image files that an interrupted save left behind, removed once surely orphaned.

A save the database interrupts can leave files no record names (or GridFS chunks without their
file document). They are removed once older than a grace period that outlasts any save in
progress; each pass starts where the previous one ended, so every file is judged once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from bson import ObjectId
from pymongo.errors import PyMongoError

from serve.records import IMAGES, PREDICTIONS, PredictionRecords, now

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class SweepResult:
    files: int  # image files no record names, removed
    chunks: int  # chunks whose file document is gone, removed
    cutoff: datetime  # everything before it was judged: the next pass's ``since``


def sweep_orphans(
    records: PredictionRecords, grace: timedelta, since: datetime | None = None, page: int = 500
) -> SweepResult:
    """Remove image files that no record names, and chunks whose file document is gone, written
    between ``since`` (everything when None) and ``grace`` ago. Returns counts and the cutoff,
    the next sweep's ``since``."""
    cutoff = now() - grace
    window = {"$lt": cutoff} if since is None else {"$gte": since, "$lt": cutoff}
    files = chunks = 0
    batch: list[dict] = []
    cursor = records.db[f"{IMAGES}.files"].find({"uploadDate": window}, {"metadata.prediction_id": 1})
    for doc in cursor:
        batch.append(doc)
        if len(batch) == page:
            files += _drop_unreferenced(records, batch)
            batch = []
    files += _drop_unreferenced(records, batch)
    # GridFS writes chunks before the file document: an interrupted put leaves chunks only.
    ids = {"$lt": ObjectId.from_datetime(cutoff)}
    if since is not None:
        ids["$gte"] = ObjectId.from_datetime(since)
    chunk_files = {doc["files_id"] for doc in records.db[f"{IMAGES}.chunks"].find({"_id": ids}, {"files_id": 1})}
    if chunk_files:
        listed = records.db[f"{IMAGES}.files"].find({"_id": {"$in": list(chunk_files)}}, {"_id": 1})
        present = {doc["_id"] for doc in listed}
        missing = list(chunk_files - present)
        if missing:
            chunks = records.db[f"{IMAGES}.chunks"].delete_many({"files_id": {"$in": missing}}).deleted_count
    return SweepResult(files, chunks, cutoff)


def _drop_unreferenced(records: PredictionRecords, docs: list[dict]) -> int:
    if not docs:
        return 0
    owners = {doc["_id"]: (doc.get("metadata") or {}).get("prediction_id") for doc in docs}
    named = {p for p in owners.values() if p}
    recorded = {r["_id"] for r in records.db[PREDICTIONS].find({"_id": {"$in": list(named)}}, {"_id": 1})}
    dropped = 0
    for file_id, prediction_id in owners.items():
        if prediction_id not in recorded:
            records.files.delete(file_id)
            dropped += 1
    return dropped


class OrphanSweeper(threading.Thread):
    """Sweeps orphans every ``interval_s`` in the background. The first pass covers everything;
    each later pass starts at the previous pass's cutoff, so every file is judged once."""

    def __init__(self, records: PredictionRecords, interval_s: float, grace_s: float, on_swept=None):
        super().__init__(name="orphan-sweeper", daemon=True)
        self.records, self.interval_s, self.grace = records, interval_s, timedelta(seconds=grace_s)
        self.on_swept = on_swept or (lambda result: None)
        self.since: datetime | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.sweep_once()

    def sweep_once(self) -> SweepResult | None:
        try:
            result = sweep_orphans(self.records, self.grace, self.since)
        except PyMongoError as exc:  # the database is down: the same window again next time
            logger.warning("orphan sweep skipped: database unavailable (%s)", exc.__class__.__name__)
            return None
        self.since = result.cutoff
        if result.files or result.chunks:
            logger.info("orphan sweep removed %d files and %d chunks", result.files, result.chunks)
        self.on_swept(result)
        return result

    def stop(self) -> None:
        self.stopped.set()
