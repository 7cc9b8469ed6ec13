"""API keys, the audit log, sessions, rate limits and settings: real MongoDB (SecantusDB), no Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from serve.api_keys import ApiKeys
from serve.audit import AuditLog, entry_hash, pseudonym
from serve.identity import Identity
from serve.rate_limit import RateLimiter
from serve.sessions import SessionCookies, SessionStore
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


def test_session_cookies_are_signed():
    cookies = SessionCookies("secret", max_s=3600)
    value = cookies.value("abc123")
    assert cookies.session_id(value) == "abc123"
    assert cookies.session_id("other." + value.split(".")[1]) is None  # a guessed id with a copied signature
    assert SessionCookies("another-secret", 3600).session_id(value) is None
    assert cookies.session_id("abc123") is None and cookies.session_id(None) is None
    header = cookies.header("abc123", secure=True)
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Secure" in header and "Max-Age=3600" in header


def test_sessions_end_on_logout_idleness_age_and_key_revocation(access_db):
    keys = ApiKeys(access_db)
    key_id, _ = keys.create("dr-s", "clinician")
    store = SessionStore(access_db, keys, idle_s=600, max_s=3600)
    session = store.start(key_id, "10.0.0.7")
    assert store.identity(session) == Identity("dr-s", key_id, "clinician", via="session")
    assert store.end(session) and store.identity(session) is None  # any copy of the cookie stops working
    assert store.end(session) is False
    idle = store.start(key_id, None)
    access_db["sessions"].update_one(
        {"_id": idle}, {"$set": {"last_seen": datetime.now(timezone.utc) - timedelta(seconds=601)}}
    )
    assert store.identity(idle) is None
    old = store.start(key_id, None)
    access_db["sessions"].update_one({"_id": old}, {"$set": {"expires_at": datetime.now(timezone.utc)}})
    assert store.identity(old) is None
    live = store.start(key_id, None)
    keys.revoke(key_id)
    assert store.identity(live) is None
    assert store.identity("never-issued") is None


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


def test_cxr_keys_on_a_serving_cpu_pod_reads_the_database_uri_from_the_mounted_secret(
    mongo_server, access_db, tmp_path
):
    """The deploy steps make the first key with `kubectl exec` on a CPU worker, whose URI is a file in
    CXR_SECRETS_DIR (the pod's Secret volume), not a variable."""
    from tests.serve.helpers import mount_secret

    mount_secret(tmp_path / "cxr", {"CXR_MONGODB_URI": mongo_server.uri})
    env = {k: v for k, v in os.environ.items() if k != "CXR_MONGODB_URI"}
    env |= {"CXR_SECRETS_DIR": str(tmp_path / "cxr"), "CXR_MONGODB_DATABASE": access_db.name}
    cxr = str(Path(sys.executable).with_name("cxr"))
    created = subprocess.run(
        [cxr, "keys", "create", "--name", "ward-7"], env=env, capture_output=True, text=True, timeout=120
    )
    assert created.returncode == 0, created.stderr
    assert ApiKeys(access_db).verify(created.stdout.split("store it now): ")[1].strip()).name == "ward-7"


def _chained_log(access_db, entries: int = 6) -> AuditLog:
    audit, actor = AuditLog(access_db), Identity("dr-chain", "k9", "clinician")
    for i in range(entries):
        audit.record(actor, "view", prediction_id=f"p{i}", patient_id=f"P-{i}")
    assert audit.verify().intact and audit.verify().entries == entries
    return audit


def _tamper(access_db, how: str) -> None:
    """What someone holding the app's database credentials could do to hide a read."""
    log = access_db["audit"]
    if how == "delete":
        log.delete_one({"seq": 2})
    elif how == "alter":
        log.update_one({"seq": 3}, {"$set": {"actor": "someone-else"}})
    elif how == "reorder":  # swap two entries' places in the sequence
        log.update_one({"seq": 1}, {"$set": {"seq": -1}})
        log.update_one({"seq": 4}, {"$set": {"seq": 1}})
        log.update_one({"seq": -1}, {"$set": {"seq": 4}})
    elif how == "rehash":  # alter, and recompute that entry's own hash: its successor still names the old one
        entry = log.find_one({"seq": 3})
        entry["patient_id"] = "P-OTHER"
        log.update_one({"seq": 3}, {"$set": {"patient_id": "P-OTHER", "hash": entry_hash(entry)}})


@pytest.mark.parametrize("how", ["delete", "alter", "reorder", "rehash"])
def test_the_audit_chain_shows_a_deleted_altered_or_reordered_entry(access_db, how):
    audit = _chained_log(access_db)
    _tamper(access_db, how)
    check = audit.verify()
    assert not check.intact and check.problems, how
    audit.record(Identity("dr-chain", "k9", "clinician"), "view")  # new entries do not heal it
    assert not audit.verify().intact


def test_concurrent_writers_keep_one_unbroken_chain(access_db):
    import threading

    audit = AuditLog(access_db)
    writers = [AuditLog(access_db) for _ in range(4)]  # as several store replicas would
    threads = [
        threading.Thread(target=lambda w=w: [w.record(Identity("r", None, "admin"), "login") for _ in range(5)])
        for w in writers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check = audit.verify()
    assert check.intact and check.entries == 20


def test_cxr_audit_verify_exits_1_on_a_tampered_chain(mongo_server, access_db):
    cxr = str(Path(sys.executable).with_name("cxr"))
    env = {**os.environ, "CXR_MONGODB_URI": mongo_server.uri, "CXR_MONGODB_DATABASE": access_db.name}
    _chained_log(access_db)
    intact = subprocess.run([cxr, "audit", "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert intact.returncode == 0 and "intact: 6 entries" in intact.stdout
    _tamper(access_db, "delete")
    broken = subprocess.run([cxr, "audit", "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1 and "TAMPERED: entries 2..2 are missing" in broken.stdout
