"""API keys in MongoDB via pymongo: created, verified, listed and revoked.

Keys are ``cxr_<key id>_<secret>``. Only the secret's sha256 is stored (the secret is 256
random bits, so a fast hash is enough); the whole key is shown once, when created. Revoked keys
stay, marked, so the audit log's actors keep their names. No Ray here: ``cxr keys`` uses this
class directly.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timezone

from pymongo import ASCENDING
from pymongo.database import Database

from serve.identity import ROLES, Identity

API_KEYS = "api_keys"
TOKEN_PREFIX = "cxr"
MAX_RATE_LIMIT = 1_000_000  # per minute; also keeps the stored number within the database's integers


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
        if rate_limit_per_minute is not None and not 1 <= rate_limit_per_minute <= MAX_RATE_LIMIT:
            raise ValueError(f"the rate limit must be 1-{MAX_RATE_LIMIT} requests per minute")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32).replace("_", "-")
        self.collection.insert_one(
            {
                "_id": key_id,
                "name": name,
                "role": role,
                "secret_sha256": _secret_hash(secret),
                "rate_limit_per_minute": rate_limit_per_minute,
                "created_at": datetime.now(timezone.utc),
                "revoked_at": None,
            }
        )
        return key_id, f"{TOKEN_PREFIX}_{key_id}_{secret}"

    def revoke(self, key_id: str) -> bool:
        result = self.collection.update_one(
            {"_id": str(key_id), "revoked_at": None}, {"$set": {"revoked_at": datetime.now(timezone.utc)}}
        )
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
