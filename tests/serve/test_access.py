"""API keys, the audit log, sessions, rate limits and settings: real MongoDB (SecantusDB), no Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve.api_keys import ApiKeys
from serve.audit import AuditLog, pseudonym
from serve.identity import Identity
from serve.rate_limit import RateLimiter
from serve.sessions import Sessions
from serve.settings import ServeSettings


@pytest.fixture()
def access_db(mongo_server):
    from pymongo import MongoClient

    name = f"access_{os.getpid()}_{time.monotonic_ns()}"
    client = MongoClient(mongo_server.uri, tz_aware=True)
    yield client[name]
    client.drop_database(name)


def test_keys_are_stored_hashed_verified_and_revoked(access_db):
    keys = ApiKeys(access_db)
    key_id, token = keys.create("ward-7", "clinician", 30)
    stored = access_db["api_keys"].find_one({"_id": key_id})
    secret = token.split("_")[2]
    assert secret not in str(stored) and stored["secret_sha256"] != secret
    assert keys.verify(token) == Identity("ward-7", key_id, "clinician", 30)
    assert keys.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert keys.verify(f"cxr_{key_id}_") is None and keys.verify("Bearer") is None
    assert keys.verify({"$ne": None}) is None  # not a string: never reaches a query
    assert keys.revoke(key_id) and not keys.revoke(key_id)
    assert keys.verify(token) is None and keys.identity(key_id) is None
    assert [k["_id"] for k in keys.list()] == [key_id] and "secret_sha256" not in keys.list()[0]
    with pytest.raises(ValueError):
        keys.create("x", "superuser")


def test_audit_log_is_queried_by_plain_values_only(access_db):
    audit, actor = AuditLog(access_db), Identity("dr-a", "k1", "clinician")
    audit.record(actor, "create", prediction_id="p1", patient_id="P-1")
    audit.record(actor, "view", prediction_id="p1", patient_id="P-1")
    audit.record(Identity("dr-b", None, "clinician"), "view", prediction_id="p2", patient_id="P-2")
    assert [e["action"] for e in audit.query(patient_id="P-1")] == ["view", "create"]
    assert [e["actor"] for e in audit.query(action="view")] == ["dr-b", "dr-a"]
    assert audit.query(patient_id={"$ne": None}) == []  # coerced to the string "{'$ne': None}"
    with pytest.raises(ValueError):
        audit.record(actor, "delete")


def test_pseudonyms_are_keyed_and_stable():
    assert pseudonym("P-1", "k") == pseudonym("P-1", "k") != pseudonym("P-1", "other") != pseudonym("P-2", "k")
    assert "P-1" not in pseudonym("P-1", "k")


def test_sessions_are_signed_and_expire():
    sessions = Sessions("secret", hours=1)
    cookie = sessions.issue("abc123")
    assert sessions.key_id(cookie) == "abc123"
    key_id, expiry, signature = cookie.split(".")
    assert sessions.key_id(f"other.{expiry}.{signature}") is None
    assert sessions.key_id(f"{key_id}.{int(expiry) + 3600}.{signature}") is None
    assert Sessions("another-secret", 1).key_id(cookie) is None
    expired = Sessions("secret", hours=1)
    expired.seconds = -10
    assert sessions.key_id(expired.issue("abc123")) is None
    header = sessions.cookie_header(cookie, secure=True)
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Secure" in header


def test_rate_limiter_refills_over_time_per_identity():
    limiter = RateLimiter(per_minute=120)  # two per second
    assert [limiter.take("a") for _ in range(120)] == [0.0] * 120
    wait = limiter.take("a")
    assert 0 < wait <= 0.5
    assert limiter.take("b") == 0.0  # another identity has its own bucket
    assert limiter.take("c", per_minute=1) == 0.0 and limiter.take("c", per_minute=1) > 30
    time.sleep(wait + 0.05)
    assert limiter.take("a") == 0.0


def test_auth_off_is_refused_outside_the_demo_and_proxy_mode_needs_trusted_proxies():
    with pytest.raises(ValidationError, match="local demo"):
        ServeSettings(auth="off")
    assert ServeSettings(auth="off", demo=True).auth == "off"
    with pytest.raises(ValidationError, match="TRUSTED_PROXIES"):
        ServeSettings(auth="proxy")
    with pytest.raises(ValidationError):
        ServeSettings(auth="none")
    assert ServeSettings().auth == "api_key"  # the default is on


def test_cxr_keys_and_audit_commands(mongo_server, access_db):
    cxr = str(Path(sys.executable).with_name("cxr"))
    env = {**os.environ, "CXR_MONGODB_URI": mongo_server.uri, "CXR_MONGODB_DATABASE": access_db.name}
    run = lambda *args: subprocess.run([cxr, *args], env=env, capture_output=True, text=True, timeout=120)  # noqa: E731
    created = run("keys", "create", "--name", "radiology-pacs", "--rate-limit", "60")
    assert created.returncode == 0, created.stderr
    token = created.stdout.split("shown once, store it now): ")[1].strip()
    key_id = created.stdout.split("key id: ")[1].split()[0]
    assert ApiKeys(access_db).verify(token).name == "radiology-pacs"
    assert key_id in run("keys", "list").stdout and token not in run("keys", "list").stdout
    AuditLog(access_db).record(
        Identity("radiology-pacs", key_id, "clinician"),
        "export",
        prediction_id="p9",
        patient_id="P-9",
        detail="original",
    )
    shown = run("audit", "--patient-id", "P-9").stdout
    assert "export" in shown and "radiology-pacs" in shown and "p9" in shown and "(original)" in shown
    assert run("audit", "--actor", "nobody").stdout == ""
    assert run("keys", "revoke", key_id).returncode == 0 and run("keys", "revoke", key_id).returncode == 1
    assert ApiKeys(access_db).verify(token) is None
