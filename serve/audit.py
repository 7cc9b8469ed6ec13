"""The append-only audit log in MongoDB, and the keyed pseudonyms that stand for patients in logs.

Product code only ever inserts into the log. An entry says who (actor), did what (create, view,
export, search, login), to which prediction or patient, when, and from where. No Ray here:
``cxr audit`` uses this class directly.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database

from serve.identity import Identity

AUDIT = "audit"
ACTIONS = ("create", "view", "export", "search", "login")


class AuditLog:
    def __init__(self, db: Database):
        self.collection = db[AUDIT]
        self._indexed = False

    def record(
        self,
        actor: Identity,
        action: str,
        *,
        prediction_id: str | None = None,
        patient_id: str | None = None,
        detail: str | None = None,
        client: str | None = None,
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        if not self._indexed:
            self.collection.create_index([("patient_id", ASCENDING), ("at", DESCENDING)], name="patient_recent")
            self.collection.create_index([("actor", ASCENDING), ("at", DESCENDING)], name="actor_recent")
            self._indexed = True
        self.collection.insert_one(
            {
                "at": datetime.now(timezone.utc),
                "actor": actor.name,
                "key_id": actor.key_id,
                "role": actor.role,
                "action": action,
                "prediction_id": prediction_id,
                "patient_id": patient_id,
                "detail": detail,
                "client": client,
            }
        )

    def query(
        self,
        *,
        patient_id: str | None = None,
        actor: str | None = None,
        prediction_id: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[dict]:
        # Plain strings only: every value is coerced, so no operator document can reach the query.
        # Newest first; entries of the same millisecond in insertion order (ObjectIds increase).
        query: dict = {}
        for field, value in (
            ("patient_id", patient_id),
            ("actor", actor),
            ("prediction_id", prediction_id),
            ("action", action),
        ):
            if value is not None:
                query[field] = str(value)
        if since is not None:
            query["at"] = {"$gte": since}
        return list(
            self.collection.find(query, {"_id": 0}).sort([("at", DESCENDING), ("_id", DESCENDING)]).limit(int(limit))
        )


def pseudonym(patient_id: str, key: str) -> str:
    """A stable, keyed stand-in for a patient ID in logs: the same patient gives the same token."""
    return "pt-" + hmac.new(key.encode(), patient_id.encode(), hashlib.sha256).hexdigest()[:16]
