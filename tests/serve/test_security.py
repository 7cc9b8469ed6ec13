"""Authentication, sessions, rate limits and the audit trail on the running service (real HTTP)."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import pytest

from tests.serve.conftest import KEY_CACHE_S
from tests.serve.helpers import chest_png, stored_counts
from tests.serve.helpers import client as suite_client

API_ROUTES = [
    ("POST", "/api/v1/predictions"),
    ("GET", "/api/v1/predictions/abc"),
    ("GET", "/api/v1/predictions/abc/image"),
    ("GET", "/api/v1/patients/P-1/predictions"),
    ("GET", "/api/v1/model"),
]


def client(service, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return suite_client(service.base_url, timeout=60, headers=headers, follow_redirects=False)


@pytest.mark.parametrize("method, path", API_ROUTES)
@pytest.mark.parametrize("token", [None, "cxr_nokey_nosecret", "not-even-a-key"])
def test_api_without_a_valid_key_is_401_and_stores_nothing(service, db, method, path, token):
    before = stored_counts(db)
    with client(service, token) as anonymous:
        files = {"image": ("cxr.png", chest_png(1), "image/png")} if method == "POST" else None
        response = anonymous.request(
            method, path, data={"patient_id": "P-AUTH-1", "save": "1"} if files else None, files=files
        )
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert stored_counts(db) == before


def test_probes_static_files_and_the_api_description_stay_public(service):
    with client(service) as anonymous:
        for path in ("/healthz", "/readyz", "/static/app.css", "/api/v1/openapi.json", "/login"):
            assert anonymous.get(path).status_code == 200, path


def test_pages_need_a_session_and_the_api_never_takes_the_cookie(service, keys):
    _, token = keys.create("dr-session")
    with client(service) as browser:
        page = browser.get("/patients?patient_id=P-1")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fpatients%3Fpatient_id%3DP-1"
        htmx = browser.get("/patients", headers={"HX-Request": "true"})
        assert htmx.status_code == 401 and htmx.headers["hx-redirect"].startswith("/login")
        form = browser.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        wrong = browser.post("/login", data={"api_key": token + "x", "csrf_token": csrf, "next": "/patients"})
        assert (
            wrong.status_code == 401
            and "not valid" in wrong.text
            and "cxr_session" not in wrong.headers.get("set-cookie", "")
        )
        no_csrf = browser.post("/login", data={"api_key": token, "next": "/patients"})
        assert no_csrf.status_code == 403
        login = browser.post("/login", data={"api_key": token, "csrf_token": csrf, "next": "//evil.example/x"})
        assert login.status_code == 303 and login.headers["location"] == "/"  # no open redirect
        cookie = login.headers["set-cookie"]
        assert "cxr_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        signed_in = browser.get("/patients")
        assert signed_in.status_code == 200 and "Signed in as <strong>dr-session</strong>" in signed_in.text
        # The session cookie is for pages only: the JSON API wants the bearer key.
        assert browser.get("/api/v1/model").status_code == 401
        out = browser.post("/logout", data={"csrf_token": csrf})
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
        assert browser.get("/patients").status_code == 303


def test_a_revoked_key_is_refused(service, keys):
    key_id, token = keys.create("to-revoke")
    keys.revoke(key_id)
    with client(service, token) as revoked:
        assert revoked.get("/api/v1/model").status_code == 401


def test_revoking_a_cached_key_takes_effect_within_the_cache_window(service, keys):
    key_id, token = keys.create("cached-then-revoked")
    with client(service, token) as user:
        assert user.get("/api/v1/model").status_code == 200  # verified, and now cached by the Ingress
        assert keys.revoke(key_id)
        time.sleep(KEY_CACHE_S + 1)
        refused = user.get("/api/v1/model")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"


def test_a_page_session_ends_when_its_key_is_revoked(service, keys):
    key_id, token = keys.create("dr-revoked-session")
    with client(service) as browser:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/login").text).group(1)
        assert browser.post("/login", data={"api_key": token, "csrf_token": csrf}).status_code == 303
        assert browser.get("/patients").status_code == 200  # the session works, and is cached
        assert keys.revoke(key_id)
        time.sleep(KEY_CACHE_S + 1)
        ended = browser.get("/patients")
        assert ended.status_code == 303 and ended.headers["location"].startswith("/login")


def test_rate_limit_per_key_answers_429_with_retry_after(service, keys):
    _, limited = keys.create("scripted-uploader", rate_limit_per_minute=3)
    with client(service, limited) as c, client(service, service.api_key) as other:
        assert [c.get("/api/v1/model").status_code for _ in range(3)] == [200, 200, 200]
        refused = c.get("/api/v1/model")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        assert other.get("/api/v1/model").status_code == 200  # another key, its own bucket


def test_audit_log_records_who_created_viewed_exported_and_searched(service, db):
    patient = f"P-AUD-{uuid.uuid4().hex[:8]}"
    body = service.predict(chest_png(77), patient_id=patient, save="1").json()
    prediction_id = body["prediction_id"]
    assert service.http.get(f"/api/v1/predictions/{prediction_id}").status_code == 200
    assert (
        service.http.get(f"/api/v1/predictions/{prediction_id}/image", params={"kind": "annotated"}).status_code == 200
    )
    assert service.http.get(f"/api/v1/patients/{patient}/predictions").status_code == 200
    assert service.http.get(f"/predictions/{prediction_id}").status_code == 200
    entries = list(db["audit"].find({"patient_id": patient}).sort("at", 1))
    assert [e["action"] for e in entries] == ["create", "view", "export", "search", "view"]
    assert {e["actor"] for e in entries} == {"test-suite"} and entries[2]["detail"] == "annotated"
    assert all(e["prediction_id"] == prediction_id for e in entries if e["action"] != "search")
    assert db["predictions"].find_one({"_id": prediction_id})["created_by"] == "test-suite"
    # A refused request leaves no audit trail of a study that does not exist.
    assert service.http.get("/api/v1/predictions/no-such-study").status_code == 404
    assert db["audit"].count_documents({"prediction_id": "no-such-study"}) == 0
