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

from serve.agreement import agreement
from serve.api_keys import ApiKeys
from serve.audit import AuditLog, pseudonym
from serve.identity import DELIVER, Identity
from serve.inputs import ReviewInput
from serve.metrics import ReviewMetrics, StoreMetrics
from serve.orphans import OrphanSweeper, SweepResult
from serve.periodic import Periodic
from serve.records import RESULTS_DUE, PredictionRecords, SaveResult, ViewSource
from serve.reviews import Claim, Reviews
from serve.sessions import SessionStore
from serve.settings import ServeSettings

logger = logging.getLogger("ray.serve")
MAX_DESTINATIONS = 20  # SR destinations one record may list (a gateway has a handful)


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
        settings = settings.with_own_secrets()
        self.records = PredictionRecords(database_uri(settings), settings.mongodb_database, settings.mongodb_timeout_ms)
        self.keys, self.audit = ApiKeys(self.records.db), AuditLog(self.records.db)
        self.sessions = SessionStore(
            self.records.db, self.keys, settings.session_idle_minutes * 60, settings.session_hours * 3600
        )
        self.pseudonym_key = settings.pseudonym_key
        self.metrics = StoreMetrics()
        self.sweeper = OrphanSweeper(
            self.records, settings.orphan_sweep_interval_s, settings.orphan_grace_s, self._count_swept
        )
        self.sweeper.start()
        self.reviews, self.review_metrics = Reviews(self.records.db), ReviewMetrics()
        self.refresher = Periodic(settings.agreement_refresh_s, self._refresh_agreement)
        self.refresher.start()

    def _refresh_agreement(self) -> list:
        """Every replica exports the same figures: each recomputes them from the database."""
        models = agreement(self.reviews.current())
        self.review_metrics.show(models)
        return models

    def _count_swept(self, result: SweepResult) -> None:
        for kind, count in (("files", result.files), ("chunks", result.chunks)):
            if count:
                self.metrics.swept.inc(count, tags={"kind": kind})

    def __del__(self):  # Serve calls this when the replica stops
        sweeper = getattr(self, "sweeper", None)  # absent when __init__ failed
        if sweeper is not None:
            sweeper.stop()
        refresher = getattr(self, "refresher", None)
        if refresher is not None:
            refresher.stop()

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

    @staticmethod
    def _owner(actor: Identity) -> str | None:
        """The creator a caller's reads are limited to (``integration``: only what it saved)."""
        return actor.owner if actor.reads_only_own else None

    def get(self, prediction_id: str, actor: Identity) -> dict | None:
        record = self.records.get(prediction_id, self._owner(actor))
        if record is not None:
            self.audit.record(actor, "view", prediction_id=prediction_id, patient_id=record["patient_id"])
            self._log(actor, "view", prediction_id, record["patient_id"])
        return record

    def image(self, prediction_id: str, kind: str, actor: Identity, read: bool = True) -> ViewSource | None:
        """What the Ingress needs to serve one picture (it draws derived ones, and caches them: with
        ``read=False`` this only checks access and writes the audit entry)."""
        record = self.records.get(prediction_id, self._owner(actor))
        data = self.records.view_source(record, kind, read) if record is not None else None
        if data is not None:
            self.audit.record(
                actor, "export", prediction_id=prediction_id, patient_id=record["patient_id"], detail=kind
            )
            self._log(actor, f"export {kind}", prediction_id, record["patient_id"])
        return data

    def record_delivery(self, prediction_id: str, delivery: dict, actor: Identity) -> str:
        """The gateway's report on one SR delivery: ``recorded``, ``not_found`` (or not this caller's to
        see), or ``too_many`` (a record names at most ``MAX_DESTINATIONS``: its size stays bounded)."""
        record = self.records.get(prediction_id, self._owner(actor))
        if record is None and actor.may(DELIVER):  # a gateway reports on the STOW-RS records it claimed
            record = self.records.get(prediction_id)
            record = record if record is not None and RESULTS_DUE in record else None
        if record is None:
            return "not_found"
        named = {d["destination"] for d in record.get("deliveries") or []}
        if delivery["destination"] not in named and len(named) >= MAX_DESTINATIONS:
            return "too_many"
        if not self.records.record_delivery(prediction_id, delivery):
            return "not_found"
        detail = f"{delivery['status']} to {delivery['destination']}"
        self.audit.record(
            actor, "delivery", prediction_id=prediction_id, patient_id=record["patient_id"], detail=detail
        )
        return "recorded"

    def claim_deliveries(self, limit: int, lease_s: float, actor: Identity) -> list[dict]:
        """STOW-RS records whose results are due at the PACS, leased to this gateway (``DELIVER``)."""
        records = self.records.claim_due(limit, lease_s)
        for record in records:
            self.audit.record(actor, "claim", prediction_id=record["_id"], patient_id=record["patient_id"])
        return records

    def delivery_instance(self, prediction_id: str, actor: Identity) -> bytes | None:
        """The DICOM instance a claimed record was made from, while its results are due: the SR and
        the annotated picture are built from it. Nothing else of anyone else's is readable this way."""
        record = self.records.get(prediction_id)
        if record is None or not record.get(RESULTS_DUE):
            return None
        self.audit.record(
            actor, "export", prediction_id=prediction_id, patient_id=record["patient_id"], detail="dicom for delivery"
        )
        return self.records.files.get(record["files"]["original"]).read()

    def thumbnail_source(self, prediction_id: str, actor: Identity) -> bytes | None:
        """The original for a search-result thumbnail: covered by the search's audit entry."""
        record = self.records.get(prediction_id, self._owner(actor))
        return self.records.image(prediction_id, "original", record) if record is not None else None

    def by_patient(self, patient_id: str, page: int, page_size: int, actor: Identity) -> tuple[list[dict], int]:
        self.audit.record(actor, "search", patient_id=patient_id, detail=f"page {page}")
        self._log(actor, "search", None, patient_id)
        return self.records.by_patient(patient_id, page, page_size, self._owner(actor))

    def worklist(self, actor: Identity, source: str | None, since, until) -> tuple[list[dict], list[str]]:
        """Unreviewed analysed records (all patients: ``READ``), and who sent them."""
        records = self.reviews.unreviewed(source, since, until)
        self.audit.record(actor, "search", detail=f"worklist: {len(records)} unreviewed")
        return records, self.reviews.sources()

    def claim_for_review(self, prediction_id: str, minutes: float, actor: Identity) -> Claim:
        claim = self.reviews.claim(prediction_id, actor.name, minutes)
        if claim.outcome == "claimed":
            self.audit.record(actor, "reading", prediction_id=prediction_id, detail=f"until {claim.until:%H:%M} UTC")
        return claim

    def release_review(self, prediction_id: str, actor: Identity) -> bool:
        return self.reviews.release(prediction_id, actor.name)

    def add_review(self, prediction_id: str, review: ReviewInput, actor: Identity) -> dict | None:
        """Append a review (``None``: no analysed record has this id); the agreement follows at once."""
        record = self.records.get(prediction_id)
        if record is None or record.get("status") == "not_analysed":
            return None
        added = self.reviews.add(record, review.verdict, review.findings, review.comment, actor.name)
        detail = f"{review.verdict}: {', '.join(review.findings) or 'no finding'}"
        self.audit.record(actor, "review", prediction_id=prediction_id, patient_id=record["patient_id"], detail=detail)
        self._refresh_agreement()
        return added

    def review_history(self, prediction_id: str, actor: Identity) -> list[dict]:
        return self.reviews.history(prediction_id) if self.records.get(prediction_id, self._owner(actor)) else []

    def agreement(self) -> list[dict]:
        return [model.to_dict() for model in self._refresh_agreement()]

    def verify_key(self, token: str) -> Identity | None:
        return self.keys.verify(token)

    def key_identity(self, key_id: str) -> Identity | None:
        return self.keys.identity(key_id)

    def start_session(self, actor: Identity, client: str | None) -> str:
        session_id = self.sessions.start(actor.key_id, client)
        self.audit.record(actor, "login", client=client)
        return session_id

    def session_identity(self, session_id: str) -> Identity | None:
        return self.sessions.identity(session_id)

    def end_session(self, session_id: str, actor: Identity | None) -> bool:
        ended = self.sessions.end(session_id)
        if ended and actor is not None:
            self.audit.record(actor, "logout")
        return ended

    def record_denied(self, actor: Identity, what: str) -> None:
        self.audit.record(actor, "denied", detail=what)

    def audit_entries(self, reader: Identity, **query) -> list[dict]:
        entries = self.audit.query(**query)
        self.audit.record(reader, "audit_read", detail=f"{len(entries)} entries")
        return entries

    def list_keys(self) -> list[dict]:
        return self.keys.list()

    def create_key(self, actor: Identity, name: str, role: str, rate_limit_per_minute: int | None) -> tuple[str, str]:
        key_id, token = self.keys.create(name, role, rate_limit_per_minute)
        self.audit.record(actor, "key_create", detail=f"{key_id} {role} {name}")
        return key_id, token

    def revoke_key(self, actor: Identity, key_id: str) -> bool:
        revoked = self.keys.revoke(key_id)
        if revoked:
            self.audit.record(actor, "key_revoke", detail=key_id)
        return revoked

    def ping(self) -> bool:
        return self.records.ping()
