"""Who may use the service, and what they did: API keys and the audit log, in MongoDB via pymongo.

- **API keys** are ``cxr_<key id>_<secret>``. Only the secret's sha256 is stored
  (the secret is 256 random bits, so a fast hash is enough); the whole key is
  shown once, when created. Revoked keys stay, marked, so the audit log's
  actors keep their names.
- **The audit log** is append-only: product code only ever inserts into it. An
  entry says who (actor), did what (create, view, export, search, login), to
  which study or patient, when, and from where.
- **Pseudonyms**: logs name patients by a keyed HMAC, never by their ID.

No Ray here: the ``cxr keys`` / ``cxr audit`` commands use these classes directly.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database

API_KEYS = "api_keys"
AUDIT = "audit"
ROLES = ("clinician", "admin")
ACTIONS = ("create", "view", "export", "search", "login")
TOKEN_PREFIX = "cxr"


@dataclass(frozen=True)
class Identity:
    name: str  # the key's name or the SSO user; what the audit log records
    key_id: str | None  # None for proxy-authenticated users and the auth-off demo
    role: str
    rate_limit_per_minute: int | None = None  # this key's own limit, overriding the service's


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class ApiKeys:
    def __init__(self, db: Database):
        self.collection = db[API_KEYS]

    def create(self, name: str, role: str = "clinician", rate_limit_per_minute: int | None = None) -> tuple[str, str]:
        """A new key; returns (key id, the whole token). The token is not stored and cannot be shown again."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if not name or len(name) > 100:
            raise ValueError("name must be 1-100 characters")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32).replace("_", "-")
        self.collection.insert_one({"_id": key_id, "name": name, "role": role, "secret_sha256": _secret_hash(secret),
                                    "rate_limit_per_minute": rate_limit_per_minute,
                                    "created_at": datetime.now(timezone.utc), "revoked_at": None})
        return key_id, f"{TOKEN_PREFIX}_{key_id}_{secret}"

    def revoke(self, key_id: str) -> bool:
        result = self.collection.update_one({"_id": str(key_id), "revoked_at": None},
                                            {"$set": {"revoked_at": datetime.now(timezone.utc)}})
        return result.modified_count == 1

    def list(self) -> list[dict]:
        return list(self.collection.find({}, {"secret_sha256": 0}).sort("created_at", ASCENDING))

    def identity(self, key_id: str) -> Identity | None:
        """The key's identity while it is not revoked (sessions re-check this)."""
        doc = self.collection.find_one({"_id": str(key_id), "revoked_at": None})
        return None if doc is None else Identity(doc["name"], doc["_id"], doc["role"], doc.get("rate_limit_per_minute"))

    def verify(self, token: str) -> Identity | None:
        parsed = parse_token(token) if isinstance(token, str) else None
        if parsed is None:
            return None
        key_id, secret = parsed
        doc = self.collection.find_one({"_id": key_id, "revoked_at": None})
        if doc is None or not hmac.compare_digest(doc["secret_sha256"], _secret_hash(secret)):
            return None
        return Identity(doc["name"], doc["_id"], doc["role"], doc.get("rate_limit_per_minute"))


class AuditLog:
    def __init__(self, db: Database):
        self.collection = db[AUDIT]
        self._indexed = False

    def record(self, actor: Identity, action: str, *, prediction_id: str | None = None,
               patient_id: str | None = None, detail: str | None = None, client: str | None = None) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        if not self._indexed:
            self.collection.create_index([("patient_id", ASCENDING), ("at", DESCENDING)], name="patient_recent")
            self.collection.create_index([("actor", ASCENDING), ("at", DESCENDING)], name="actor_recent")
            self._indexed = True
        self.collection.insert_one({"at": datetime.now(timezone.utc), "actor": actor.name, "key_id": actor.key_id,
                                    "role": actor.role, "action": action, "prediction_id": prediction_id,
                                    "patient_id": patient_id, "detail": detail, "client": client})

    def query(self, *, patient_id: str | None = None, actor: str | None = None, prediction_id: str | None = None,
              action: str | None = None, since: datetime | None = None, limit: int = 100) -> list[dict]:
        # Plain strings only: every value is coerced, so no operator document can reach the query.
        query: dict = {}
        for field, value in (("patient_id", patient_id), ("actor", actor), ("prediction_id", prediction_id),
                             ("action", action)):
            if value is not None:
                query[field] = str(value)
        if since is not None:
            query["at"] = {"$gte": since}
        return list(self.collection.find(query, {"_id": 0}).sort("at", DESCENDING).limit(int(limit)))


def pseudonym(patient_id: str, key: str) -> str:
    """A stable, keyed stand-in for a patient ID in logs: the same patient gives the same token."""
    return "pt-" + hmac.new(key.encode(), patient_id.encode(), hashlib.sha256).hexdigest()[:16]
