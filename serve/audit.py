"""The append-only audit log in MongoDB, and the keyed pseudonyms that stand for patients in logs.

Product code only ever inserts into the log, and each entry is chained to the one before it by hash
(``cxr audit verify`` walks the chain). An entry says who (actor), did what (create, view,
export, search, login), to which prediction or patient, when, and from where. No Ray here:
``cxr audit`` uses this class directly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from serve.identity import Identity

AUDIT = "audit"
ACTIONS = (
    "create",
    "view",
    "export",
    "search",
    "login",
    "logout",
    "denied",
    "audit_read",
    "key_create",
    "key_revoke",
    "delivery",
    "claim",  # a gateway took over delivering a STOW-RS record's results
    "reading",  # a radiologist claimed a study to read
    "review",
)


CHAIN = "main"
GENESIS = "0" * 64
HASHED = (
    "chain",
    "seq",
    "prev",
    "at",
    "actor",
    "key_id",
    "role",
    "action",
    "prediction_id",
    "patient_id",
    "detail",
    "client",
)
MAX_RACES = 50  # concurrent writers (several store replicas) retry on a taken sequence number


def entry_hash(entry: dict) -> str:
    """sha256 over the entry's fields, the previous entry's hash among them (milliseconds, as stored)."""
    fields = {name: entry.get(name) for name in HASHED}
    at = fields["at"]
    if isinstance(at, datetime):
        fields["at"] = at.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ChainCheck:
    entries: int
    head: str  # the last entry's hash: note it somewhere else to detect a cut-off tail later
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


class AuditLog:
    """Append-only and tamper-evident: each entry carries the hash of the one before it (a chain with
    unique sequence numbers), so a deleted, altered or reordered entry breaks the chain."""

    def __init__(self, db: Database):
        self.collection = db[AUDIT]
        self._indexed = False

    def _ensure_indexes(self) -> None:
        if self._indexed:
            return
        self.collection.create_index([("patient_id", ASCENDING), ("at", DESCENDING)], name="patient_recent")
        self.collection.create_index([("actor", ASCENDING), ("at", DESCENDING)], name="actor_recent")
        self.collection.create_index([("chain", ASCENDING), ("seq", ASCENDING)], name="chain_seq", unique=True)
        self._indexed = True

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
        self._ensure_indexes()
        entry = {
            "actor": actor.name,
            "key_id": actor.key_id,
            "role": actor.role,
            "action": action,
            "prediction_id": prediction_id,
            "patient_id": patient_id,
            "detail": detail,
            "client": client,
        }
        for _ in range(MAX_RACES):
            last = self.collection.find_one({"chain": CHAIN}, {"seq": 1, "hash": 1}, sort=[("seq", DESCENDING)])
            now = datetime.now(timezone.utc)
            linked = entry | {
                "chain": CHAIN,
                "seq": 0 if last is None else last["seq"] + 1,
                "prev": GENESIS if last is None else last["hash"],
                "at": now.replace(microsecond=now.microsecond // 1000 * 1000),
            }
            try:
                self.collection.insert_one(linked | {"hash": entry_hash(linked)})
                return
            except DuplicateKeyError:  # another writer took this sequence number first
                continue
        raise RuntimeError("audit entry not written: the chain's head kept moving")

    def verify(self) -> ChainCheck:
        """Walk the chain in sequence order: every number present, every link and hash as written."""
        check, expected_seq, prev = ChainCheck(0, GENESIS), 0, GENESIS
        for entry in self.collection.find({"chain": CHAIN}).sort("seq", ASCENDING):
            seq = entry.get("seq")
            if seq != expected_seq:
                check.problems.append(f"entries {expected_seq}..{seq - 1} are missing (deleted)")
            if entry.get("prev") != prev:
                check.problems.append(f"entry {seq} does not follow the entry before it (reordered or replaced)")
            if entry.get("hash") != entry_hash(entry):
                check.problems.append(f"entry {seq} was altered after it was written")
            check.entries, expected_seq, prev = check.entries + 1, seq + 1, entry.get("hash")
        check.head = prev
        return check

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
        for name, value in (
            ("patient_id", patient_id),
            ("actor", actor),
            ("prediction_id", prediction_id),
            ("action", action),
        ):
            if value is not None:
                query[name] = str(value)
        if since is not None:
            query["at"] = {"$gte": since}
        return list(
            self.collection.find(query, {"_id": 0, "chain": 0, "prev": 0, "hash": 0})
            .sort([("at", DESCENDING), ("_id", DESCENDING)])
            .limit(int(limit))
        )


def pseudonym(patient_id: str, key: str) -> str:
    """A stable, keyed stand-in for a patient ID in logs: the same patient gives the same token."""
    return "pt-" + hmac.new(key.encode(), patient_id.encode(), hashlib.sha256).hexdigest()[:16]
