"""``ResultStore``: the one deployment that talks to MongoDB.

It owns the database connection (one pool per replica) and runs, for its callers: prediction
records and images (``serve.records``), API keys and sessions' key checks (``serve.api_keys``),
the audit log (``serve.audit``) and the orphan sweep (``serve.orphans``). Callers pass and get
plain data; every read or write of a patient's data is audited here, in one place.
"""

from __future__ import annotations

import logging

from pymongo.errors import PyMongoError
from ray import serve

from serve.api_keys import ApiKeys
from serve.audit import AuditLog, pseudonym
from serve.identity import Identity
from serve.metrics import StoreMetrics
from serve.orphans import OrphanSweeper, SweepResult
from serve.records import PredictionRecords, SaveResult
from serve.settings import ServeSettings

logger = logging.getLogger("ray.serve")


def database_uri(settings: ServeSettings) -> str:
    """``CXR_MONGODB_URI``, or the embedded SecantusDB server (started once per Ray cluster)."""
    if settings.mongodb_uri:
        return settings.mongodb_uri
    import ray

    from serve.embedded_db import embedded_mongodb

    return ray.get(embedded_mongodb(settings.embedded_db_dir, settings.embedded_db_port).uri.remote())


@serve.deployment(name="ResultStore")
class ResultStore:
    def __init__(self, settings: ServeSettings):
        self.records = PredictionRecords(database_uri(settings), settings.mongodb_database, settings.mongodb_timeout_ms)
        self.keys, self.audit = ApiKeys(self.records.db), AuditLog(self.records.db)
        self.pseudonym_key = settings.pseudonym_key
        self.metrics = StoreMetrics()
        self.sweeper = OrphanSweeper(
            self.records, settings.orphan_sweep_interval_s, settings.orphan_grace_s, self._count_swept
        )
        self.sweeper.start()

    def _count_swept(self, result: SweepResult) -> None:
        for kind, count in (("files", result.files), ("chunks", result.chunks)):
            if count:
                self.metrics.swept.inc(count, tags={"kind": kind})

    def __del__(self):  # Serve calls this when the replica stops
        sweeper = getattr(self, "sweeper", None)  # absent when __init__ failed
        if sweeper is not None:
            sweeper.stop()

    def _log(self, actor: Identity, action: str, prediction_id: str | None, patient_id: str | None) -> None:
        # Logs name patients by keyed pseudonym only; the audit collection keeps the real ID.
        who = pseudonym(patient_id, self.pseudonym_key) if patient_id else "-"
        logger.info("%s by %s: prediction %s, patient %s", action, actor.name, prediction_id or "-", who)

    def save(self, record: dict, images: dict[str, bytes], actor: Identity) -> SaveResult:
        result = self.records.save(record, images)
        if not result.saved:
            self.metrics.failures.inc(tags={"operation": "save"})
        elif not result.duplicate:
            try:
                self.audit.record(actor, "create", prediction_id=result.prediction_id, patient_id=record["patient_id"])
            except PyMongoError:  # the record is stored (and names its creator): never report it unsaved
                self.metrics.failures.inc(tags={"operation": "audit"})
                logger.error("audit entry for prediction %s not written: database unavailable", result.prediction_id)
            self._log(actor, "create", result.prediction_id, record["patient_id"])
        return result

    def get(self, prediction_id: str, actor: Identity) -> dict | None:
        record = self.records.get(prediction_id)
        if record is not None:
            self.audit.record(actor, "view", prediction_id=prediction_id, patient_id=record["patient_id"])
            self._log(actor, "view", prediction_id, record["patient_id"])
        return record

    def image(self, prediction_id: str, kind: str, actor: Identity) -> bytes | None:
        record = self.records.get(prediction_id)
        data = self.records.image(prediction_id, kind, record) if record is not None else None
        if data is not None:
            self.audit.record(
                actor, "export", prediction_id=prediction_id, patient_id=record["patient_id"], detail=kind
            )
            self._log(actor, f"export {kind}", prediction_id, record["patient_id"])
        return data

    def thumbnail_source(self, prediction_id: str) -> bytes | None:
        """The original for a search-result thumbnail: covered by the search's audit entry."""
        return self.records.image(prediction_id, "original")

    def by_patient(self, patient_id: str, page: int, page_size: int, actor: Identity) -> tuple[list[dict], int]:
        self.audit.record(actor, "search", patient_id=patient_id, detail=f"page {page}")
        self._log(actor, "search", None, patient_id)
        return self.records.by_patient(patient_id, page, page_size)

    def verify_key(self, token: str) -> Identity | None:
        return self.keys.verify(token)

    def key_identity(self, key_id: str) -> Identity | None:
        return self.keys.identity(key_id)

    def record_login(self, actor: Identity, client: str | None) -> None:
        self.audit.record(actor, "login", client=client)

    def ping(self) -> bool:
        return self.records.ping()
