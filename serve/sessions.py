"""Page sessions, held server-side: ``/login`` with an API key starts one, ``/logout`` ends it.

The cookie carries only a random session id and its HMAC. The ``sessions`` collection holds the
rest: which key, when it started, when it was last used. A session ends when it is logged out
(from any copy of the cookie), idle longer than ``idle_s``, older than ``max_s``, or when its key
is revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone

from pymongo import ASCENDING
from pymongo.database import Database

from serve.api_keys import ApiKeys
from serve.identity import Identity

SESSION_COOKIE = "cxr_session"
SESSIONS = "sessions"
TOUCH_EVERY = timedelta(seconds=60)  # last_seen is written at most this often per session


class SessionCookies:
    """``<session id>.<hmac>``: only this service can mint one, so a guessed id is never looked up."""

    def __init__(self, secret: str, max_s: float):
        self.secret, self.max_s = secret.encode(), int(max_s)

    def _sign(self, session_id: str) -> str:
        return hmac.new(self.secret, session_id.encode(), hashlib.sha256).hexdigest()

    def value(self, session_id: str) -> str:
        return f"{session_id}.{self._sign(session_id)}"

    def session_id(self, cookie: str | None) -> str | None:
        session_id, _, signature = (cookie or "").partition(".")
        if not session_id or not hmac.compare_digest(signature, self._sign(session_id)):
            return None
        return session_id

    def header(self, session_id: str, secure: bool) -> str:
        return f"{SESSION_COOKIE}={self.value(session_id)}; Path=/; Max-Age={self.max_s}; SameSite=Strict; HttpOnly" + (
            "; Secure" if secure else ""
        )

    @staticmethod
    def clear_header() -> str:
        return f"{SESSION_COOKIE}=; Path=/; Max-Age=0; SameSite=Strict; HttpOnly"


class SessionStore:
    def __init__(self, db: Database, keys: ApiKeys, idle_s: float, max_s: float):
        self.collection, self.keys = db[SESSIONS], keys
        self.idle, self.max = timedelta(seconds=idle_s), timedelta(seconds=max_s)
        self._indexed = False

    def start(self, key_id: str, client: str | None) -> str:
        if not self._indexed:  # ended and expired sessions are removed by the database a day later
            self.collection.create_index([("expires_at", ASCENDING)], name="expiry", expireAfterSeconds=86400)
            self._indexed = True
        session_id, now = secrets.token_urlsafe(32), datetime.now(timezone.utc)
        self.collection.insert_one(
            {
                "_id": session_id,
                "key_id": key_id,
                "created_at": now,
                "last_seen": now,
                "expires_at": now + self.max,
                "ended_at": None,
                "client": client,
            }
        )
        return session_id

    def identity(self, session_id: str) -> Identity | None:
        """The session's identity while it is open, not idle too long and its key not revoked."""
        now = datetime.now(timezone.utc)
        doc = self.collection.find_one({"_id": str(session_id), "ended_at": None})
        if doc is None or doc["expires_at"] <= now or doc["last_seen"] + self.idle <= now:
            return None
        key = self.keys.identity(doc["key_id"])
        if key is None:
            return None
        if now - doc["last_seen"] >= TOUCH_EVERY:
            self.collection.update_one({"_id": doc["_id"]}, {"$set": {"last_seen": now}})
        return Identity(key.name, key.key_id, key.role, key.rate_limit_per_minute, via="session")

    def end(self, session_id: str) -> bool:
        result = self.collection.update_one(
            {"_id": str(session_id), "ended_at": None}, {"$set": {"ended_at": datetime.now(timezone.utc)}}
        )
        return result.modified_count == 1
