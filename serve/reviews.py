"""Radiologists' reviews and reading claims, in MongoDB through pymongo.

A **review** is a radiologist's verdict on one analysed record: ``agree`` (the model's findings
stand) or ``disagree`` with the findings as they read them (softmax models: the one label; multi-
label models: the set of findings present, possibly none). Reviews are append-only: each is a new
document in ``reviews``, naming the one it supersedes; none is updated or deleted. The record keeps
a copy of its current review (``review``), so that the worklist leaves reviewed records out with
one query, and the monitoring reads the current verdicts from ``reviews`` alone.

A **claim** ("I am reading this one") is ``reading`` on the record: who, until when. It is taken
atomically (one reader wins), lapses by itself at ``until`` (a reader who walks away does not block
the study), may be renewed by its holder, and ends with the holder's review or release.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.database import Database

from serve.records import PREDICTIONS, now

REVIEWS = "reviews"
VERDICTS = ("agree", "disagree")
MAX_COMMENT = 2000


SENDING_AE = "dicom.sending_application_entity_title"  # where a DICOM instance came from (its File Meta)


@dataclass(frozen=True)
class Claim:
    outcome: str  # claimed | taken (by another reader) | reviewed | not_found
    by: str | None = None
    until: datetime | None = None


def findings_of(record: dict) -> list[str]:
    """The labels the model called: the top label (softmax) or those over threshold (multi-label)."""
    return sorted(record.get("positives") or [record["top_label"]])


class Reviews:
    def __init__(self, db: Database):
        self.db = db
        self._indexed = False

    def _ensure_indexes(self) -> None:
        if self._indexed:
            return
        self.db[REVIEWS].create_index([("prediction_id", ASCENDING), ("at", DESCENDING)], name="per_record")
        self.db[REVIEWS].create_index([("at", ASCENDING)], name="at")
        self._indexed = True

    def claim(self, prediction_id: str, reader: str, minutes: float, at: datetime | None = None) -> Claim:
        at = at or now()
        until = at + timedelta(minutes=minutes)
        free = {"$or": [{"reading": {"$exists": False}}, {"reading.until": {"$lte": at}}, {"reading.by": reader}]}
        query = {"_id": prediction_id, "status": {"$ne": "not_analysed"}, "review": {"$exists": False}} | free
        taken = self.db[PREDICTIONS].find_one_and_update(
            query, {"$set": {"reading": {"by": reader, "until": until}}}, return_document=ReturnDocument.AFTER
        )
        if taken is not None:
            return Claim("claimed", reader, until)
        record = self.db[PREDICTIONS].find_one({"_id": prediction_id}, {"reading": 1, "review": 1, "status": 1})
        if record is None or record.get("status") == "not_analysed":
            return Claim("not_found")
        if "review" in record:
            return Claim("reviewed")
        return Claim("taken", record["reading"]["by"], record["reading"]["until"])

    def release(self, prediction_id: str, reader: str) -> bool:
        result = self.db[PREDICTIONS].update_one(
            {"_id": prediction_id, "reading.by": reader}, {"$unset": {"reading": ""}}
        )
        return result.modified_count == 1

    def add(self, record: dict, verdict: str, findings: list[str], comment: str, reviewer: str) -> dict:
        """Append a review; it becomes the record's current one (a later review supersedes it)."""
        self._ensure_indexes()
        model = record["model"]
        previous = (record.get("review") or {}).get("review_id")
        review = {
            "_id": uuid.uuid4().hex,
            "prediction_id": record["_id"],
            "patient_id": record["patient_id"],
            "at": now(),
            "reviewer": reviewer,
            "verdict": verdict,
            "findings": sorted(findings),  # what the radiologist reads as present
            "predicted": findings_of(record),  # what the model called
            "labels": list(model.get("labels") or record["probabilities"]),
            "model_name": model["name"],
            "model_version": model["version"],
            "weights_sha256": model["weights_sha256"],
            "comment": comment,
            "supersedes": previous,
        }
        self.db[REVIEWS].insert_one(review)
        current = {k: review[k] for k in ("verdict", "findings", "reviewer", "at")} | {"review_id": review["_id"]}
        self.db[PREDICTIONS].update_one(
            {"_id": record["_id"]}, {"$set": {"review": current}, "$unset": {"reading": ""}}
        )
        return review

    def history(self, prediction_id: str) -> list[dict]:
        """Every review of a record, newest first (the first is the current one)."""
        return list(
            self.db[REVIEWS].find({"prediction_id": prediction_id}).sort([("at", DESCENDING), ("_id", DESCENDING)])
        )

    def current(self, since: datetime | None = None) -> list[dict]:
        """The current review of every reviewed record (reviewed at or after ``since`` when given)."""
        query = {"at": {"$gte": since}} if since else {}
        latest: dict[str, dict] = {}
        for review in self.db[REVIEWS].find(query).sort([("at", ASCENDING), ("_id", ASCENDING)]):
            latest[review["prediction_id"]] = review  # later ones supersede
        return list(latest.values())

    def unreviewed(self, source: str | None = None, since: datetime | None = None, until: datetime | None = None):
        """Analysed records no one has reviewed yet, with what the worklist needs of them."""
        query: dict = {"status": {"$ne": "not_analysed"}, "review": {"$exists": False}}
        if source:  # the sending AE of a DICOM instance, else the caller (serve.worklist.entry's source)
            query["$or"] = [{SENDING_AE: source}, {"created_by": source, SENDING_AE: {"$exists": False}}]
        if since or until:
            query["created_at"] = {k: v for k, v in (("$gte", since), ("$lt", until)) if v is not None}
        fields = ("patient_id", "created_at", "created_by", "probabilities", "top_label", "confidence")
        projection = dict.fromkeys(
            (*fields, "low_confidence", "reading", "model.version", "dicom.accession_number", SENDING_AE), 1
        )
        return list(self.db[PREDICTIONS].find(query, projection))

    def sources(self) -> list[str]:
        """Where records awaiting review came from (sending AE titles, and callers for the rest): the
        worklist's source filter's choices."""
        waiting = {"review": {"$exists": False}}
        titles = self.db[PREDICTIONS].distinct(SENDING_AE, waiting)
        callers = self.db[PREDICTIONS].distinct("created_by", waiting | {SENDING_AE: {"$exists": False}})
        return sorted({s for s in (*titles, *callers) if s})
