"""Prediction records and images in MongoDB, through pymongo only.

Images go to GridFS first, then the record that points at them, so no record
ever names a missing file. ``request_id`` is unique: a repeated or concurrent
save of the same request returns the one stored record, and the loser of a race
removes the files it uploaded. Writes use write concern ``majority``. When the
database cannot be reached, ``save`` says so (``saved: False`` with a reason);
it never claims a save that did not happen.

A save the database interrupts can leave files no record names (or GridFS chunks
without their file document): the orphan sweep removes them once they are older
than a grace period that outlasts any save in progress.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timedelta, timezone

import gridfs
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, WriteConcern
from pymongo.errors import CollectionInvalid, DuplicateKeyError, PyMongoError, WriteError
from ray import serve
from ray.serve.metrics import Counter

from serve.access import ApiKeys, AuditLog, Identity, pseudonym
from serve.settings import ServeSettings

logger = logging.getLogger("ray.serve")

PREDICTIONS = "predictions"
IMAGE_KINDS = ("original", "annotated", "gradcam")

PREDICTION_SCHEMA = {
    "bsonType": "object",
    "required": ["_id", "request_id", "patient_id", "created_at", "probabilities", "top_label",
                 "confidence", "model", "files"],
    "properties": {
        "_id": {"bsonType": "string"},
        "request_id": {"bsonType": "string"},
        "patient_id": {"bsonType": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
        "created_at": {"bsonType": "date"},
        "probabilities": {"bsonType": "object"},
        "top_label": {"bsonType": "string"},
        "confidence": {"bsonType": "double", "minimum": 0, "maximum": 1},
        "positives": {"bsonType": "array"},
        "low_confidence": {"bsonType": "bool"},
        # Traceability: which weights, preprocessing, thresholds and calibration produced this record.
        "model": {"bsonType": "object", "required": ["name", "version", "weights_sha256", "preprocessing_version",
                                                     "thresholds", "calibration_temperature", "code_version"]},
        "files": {"bsonType": "object", "required": ["original", "annotated"]},
    },
}


class ResultRepository:
    def __init__(self, uri: str, database: str, timeout_ms: int = 3000):
        self.client = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                                  socketTimeoutMS=max(timeout_ms * 3, 10000), tz_aware=True)
        self.db = self.client.get_database(database, write_concern=WriteConcern(w="majority"))
        self.files = gridfs.GridFS(self.db, collection="images")
        self._schema_ready = False

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        try:
            self.db.create_collection(PREDICTIONS, validator={"$jsonSchema": PREDICTION_SCHEMA})
        except CollectionInvalid:
            self.db.command("collMod", PREDICTIONS, validator={"$jsonSchema": PREDICTION_SCHEMA})
        collection = self.db[PREDICTIONS]
        collection.create_index([("request_id", ASCENDING)], unique=True, name="request_id_unique")
        collection.create_index([("patient_id", ASCENDING), ("created_at", DESCENDING)], name="patient_recent")
        self.db["images.files"].create_index([("uploadDate", ASCENDING)], name="upload_date")
        self._schema_ready = True

    def ping(self) -> bool:
        try:
            self.client.admin.command("ping")
            return True
        except PyMongoError:
            return False

    def _existing(self, request_id: str) -> dict | None:
        return self.db[PREDICTIONS].find_one({"request_id": request_id})

    def save(self, record: dict, images: dict[str, bytes]) -> dict:
        """Store images then the record; returns {saved, prediction_id, duplicate, reason}."""
        uploaded = []
        try:
            self.ensure_schema()
            existing = self._existing(record["request_id"])
            if existing is not None:
                return {"saved": True, "prediction_id": existing["_id"], "duplicate": True}
            prediction_id = uuid.uuid4().hex
            files = {}
            for kind, data in images.items():
                file_id = self.files.put(data, filename=f"{prediction_id}-{kind}.png", content_type="image/png",
                                         metadata={"prediction_id": prediction_id, "kind": kind,
                                                   "request_id": record["request_id"]})
                uploaded.append(file_id)
                files[kind] = file_id
            document = {**record, "_id": prediction_id, "files": files}
            try:
                self.db[PREDICTIONS].insert_one(document)
            except DuplicateKeyError:
                # A concurrent save of the same request won; keep its record, drop our files.
                self._discard(uploaded)
                existing = self._existing(record["request_id"])
                return {"saved": True, "prediction_id": existing["_id"], "duplicate": True}
            return {"saved": True, "prediction_id": prediction_id, "duplicate": False}
        except WriteError as exc:
            self._discard(uploaded)
            return {"saved": False, "prediction_id": None, "duplicate": False,
                    "reason": f"record rejected by the database schema (code {exc.code})"}
        except PyMongoError as exc:
            self._discard(uploaded)
            return {"saved": False, "prediction_id": None, "duplicate": False,
                    "reason": f"database unavailable ({exc.__class__.__name__})"}

    def _discard(self, file_ids) -> None:
        for file_id in file_ids:
            try:
                self.files.delete(file_id)
            except PyMongoError:
                pass  # left for the orphan sweep: files whose prediction_id has no record

    def sweep_orphans(self, grace: timedelta, since: datetime | None = None, page: int = 500) -> dict:
        """Remove image files that no record names, and chunks whose file document is gone, written
        between ``since`` (everything when None) and ``grace`` ago. Returns counts and the cutoff,
        the next sweep's ``since``."""
        cutoff = now() - grace
        window = {"$lt": cutoff} if since is None else {"$gte": since, "$lt": cutoff}
        files = chunks = 0
        batch: list[dict] = []
        cursor = self.db["images.files"].find({"uploadDate": window}, {"metadata.prediction_id": 1})
        for doc in cursor:
            batch.append(doc)
            if len(batch) == page:
                files += self._drop_unreferenced(batch)
                batch = []
        files += self._drop_unreferenced(batch)
        # GridFS writes chunks before the file document: an interrupted put leaves chunks only.
        ids = {"$lt": ObjectId.from_datetime(cutoff)}
        if since is not None:
            ids["$gte"] = ObjectId.from_datetime(since)
        chunk_files = {doc["files_id"] for doc in self.db["images.chunks"].find({"_id": ids}, {"files_id": 1})}
        if chunk_files:
            present = {doc["_id"] for doc in self.db["images.files"].find({"_id": {"$in": list(chunk_files)}}, {"_id": 1})}
            missing = list(chunk_files - present)
            if missing:
                chunks = self.db["images.chunks"].delete_many({"files_id": {"$in": missing}}).deleted_count
        return {"files": files, "chunks": chunks, "cutoff": cutoff}

    def _drop_unreferenced(self, docs: list[dict]) -> int:
        if not docs:
            return 0
        owners = {doc["_id"]: (doc.get("metadata") or {}).get("prediction_id") for doc in docs}
        named = {p for p in owners.values() if p}
        recorded = {r["_id"] for r in self.db[PREDICTIONS].find({"_id": {"$in": list(named)}}, {"_id": 1})}
        dropped = 0
        for file_id, prediction_id in owners.items():
            if prediction_id not in recorded:
                self.files.delete(file_id)
                dropped += 1
        return dropped

    def get(self, prediction_id: str) -> dict | None:
        return self.db[PREDICTIONS].find_one({"_id": prediction_id})

    def image(self, prediction_id: str, kind: str, record: dict | None = None) -> bytes | None:
        record = record or self.get(prediction_id)
        if record is None or kind not in record["files"]:
            return None
        return self.files.get(record["files"][kind]).read()

    def by_patient(self, patient_id: str, page: int = 1, page_size: int = 20) -> tuple[list[dict], int]:
        query = {"patient_id": patient_id}
        total = self.db[PREDICTIONS].count_documents(query)
        cursor = (self.db[PREDICTIONS].find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)])
                  .skip((page - 1) * page_size).limit(page_size))
        return list(cursor), total


def now() -> datetime:
    return datetime.now(timezone.utc)


class OrphanSweeper(threading.Thread):
    """Sweeps orphans every ``interval_s`` in the background. The first pass covers everything;
    each later pass starts at the previous pass's cutoff, so every file is judged once."""

    def __init__(self, repo: ResultRepository, interval_s: float, grace_s: float, on_swept=None):
        super().__init__(name="orphan-sweeper", daemon=True)
        self.repo, self.interval_s, self.grace = repo, interval_s, timedelta(seconds=grace_s)
        self.on_swept = on_swept or (lambda result: None)
        self.since: datetime | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.sweep_once()

    def sweep_once(self) -> dict | None:
        try:
            result = self.repo.sweep_orphans(self.grace, self.since)
        except PyMongoError as exc:  # the database is down: the same window again next time
            logger.warning("orphan sweep skipped: database unavailable (%s)", exc.__class__.__name__)
            return None
        self.since = result["cutoff"]
        if result["files"] or result["chunks"]:
            logger.info("orphan sweep removed %d files and %d chunks", result["files"], result["chunks"])
        self.on_swept(result)
        return result

    def stop(self) -> None:
        self.stopped.set()


@serve.deployment(name="ResultStore")
class ResultStore:
    """Serve wrapper: the database connection lives in the replica, callers pass plain data."""

    def __init__(self, settings: dict):
        config = ServeSettings(**settings)
        uri = config.mongodb_uri
        if not uri:
            import ray

            from serve.embedded_db import embedded_mongodb

            uri = ray.get(embedded_mongodb(config.embedded_db_dir, config.embedded_db_port).uri.remote())
        self.repo = ResultRepository(uri, config.mongodb_database, config.mongodb_timeout_ms)
        self.keys, self.audit = ApiKeys(self.repo.db), AuditLog(self.repo.db)
        self.pseudonym_key = config.pseudonym_key
        self.failures = Counter("cxr_storage_failures_total", description="saves that could not be stored",
                                tag_keys=("operation",))
        self.swept = Counter("cxr_orphans_swept_total", description="image files and chunks left by interrupted "
                             "saves, removed by the orphan sweep", tag_keys=("kind",))
        self.sweeper = OrphanSweeper(self.repo, config.orphan_sweep_interval_s, config.orphan_grace_s,
                                     self._count_swept)
        self.sweeper.start()

    def _count_swept(self, result: dict) -> None:
        for kind in ("files", "chunks"):
            if result[kind]:
                self.swept.inc(result[kind], tags={"kind": kind})

    def __del__(self):  # Serve calls this when the replica stops
        sweeper = getattr(self, "sweeper", None)  # absent when __init__ failed
        if sweeper is not None:
            sweeper.stop()

    def _log(self, actor: Identity, action: str, prediction_id: str | None, patient_id: str | None) -> None:
        # Logs name patients by keyed pseudonym only; the audit collection keeps the real ID.
        who = pseudonym(patient_id, self.pseudonym_key) if patient_id else "-"
        logger.info("%s by %s: study %s, patient %s", action, actor.name, prediction_id or "-", who)

    def save(self, record: dict, images: dict[str, bytes], actor: Identity) -> dict:
        result = self.repo.save(record, images)
        if not result["saved"]:
            self.failures.inc(tags={"operation": "save"})
        elif not result["duplicate"]:
            try:
                self.audit.record(actor, "create", prediction_id=result["prediction_id"],
                                  patient_id=record["patient_id"])
            except PyMongoError:  # the record is stored (and names its creator): never report it unsaved
                self.failures.inc(tags={"operation": "audit"})
                logger.error("audit entry for study %s not written: database unavailable", result["prediction_id"])
            self._log(actor, "create", result["prediction_id"], record["patient_id"])
        return result

    def get(self, prediction_id: str, actor: Identity) -> dict | None:
        record = self.repo.get(prediction_id)
        if record is not None:
            self.audit.record(actor, "view", prediction_id=prediction_id, patient_id=record["patient_id"])
            self._log(actor, "view", prediction_id, record["patient_id"])
        return record

    def image(self, prediction_id: str, kind: str, actor: Identity) -> bytes | None:
        record = self.repo.get(prediction_id)
        data = self.repo.image(prediction_id, kind, record) if record is not None else None
        if data is not None:
            self.audit.record(actor, "export", prediction_id=prediction_id, patient_id=record["patient_id"],
                              detail=kind)
            self._log(actor, f"export {kind}", prediction_id, record["patient_id"])
        return data

    def thumbnail_source(self, prediction_id: str) -> bytes | None:
        """The original for a search-result thumbnail: covered by the search's audit entry."""
        return self.repo.image(prediction_id, "original")

    def by_patient(self, patient_id: str, page: int, page_size: int, actor: Identity):
        self.audit.record(actor, "search", patient_id=patient_id, detail=f"page {page}")
        self._log(actor, "search", None, patient_id)
        return self.repo.by_patient(patient_id, page, page_size)

    def verify_key(self, token: str) -> Identity | None:
        return self.keys.verify(token)

    def key_identity(self, key_id: str) -> Identity | None:
        return self.keys.identity(key_id)

    def record_login(self, actor: Identity, client: str | None) -> None:
        self.audit.record(actor, "login", client=client)

    def ping(self) -> bool:
        return self.repo.ping()
