"""The clinician pages over real HTTP: full documents for browsers, fragments for htmx."""

from __future__ import annotations

import io
import re
import uuid

from PIL import Image

from tests.serve.helpers import (
    HX,
    chest_png,
    client,
    csrf_token,
    is_full_page,
    post_prediction,
    save_held,
    stored_counts,
)
from ui.views import HTMX_FILE, STATIC_DIR


def test_new_study_page_and_static_files(service):
    page = service.http.get("/")
    assert page.status_code == 200 and is_full_page(page.text)
    assert 'action="/predictions"' in page.text and 'enctype="multipart/form-data"' in page.text
    assert page.headers["cache-control"] == "no-store"
    htmx = service.http.get(f"/static/{HTMX_FILE}")
    assert htmx.status_code == 200 and htmx.content == (STATIC_DIR / HTMX_FILE).read_bytes()
    assert service.http.get("/static/app.css").status_code == 200
    assert service.http.get("/static/../serve/app.py").status_code == 404


def test_an_unknown_address_or_method_gets_a_page_for_people_and_json_for_machines(service, db):
    before = stored_counts(db)
    page = service.http.get("/no-such-page", headers={"Accept": "text/html"})
    assert page.status_code == 404 and is_full_page(page.text)  # titled, landmarks, the way back
    assert "<title>Not found" in page.text and '<html lang="en">' in page.text and "<h1>Not found</h1>" in page.text
    wrong = service.http.delete("/worklist")
    assert (
        wrong.status_code == 405
        and is_full_page(wrong.text)
        and set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}
    )
    for path in ("/api/v1/no-such-endpoint", "/dicomweb/no-such-resource", "/fhir/NoSuchType"):
        missing = service.http.get(path)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found", path
    refused = service.http.put("/api/v1/predictions", json={})
    assert refused.status_code == 405 and refused.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in refused.headers["allow"].split(", ")
    assert stored_counts(db) == before


def test_plain_form_post_returns_the_whole_page_with_the_result(service, db):
    before = stored_counts(db)
    response = post_prediction(service, chest_png(40))
    assert response.status_code == 200 and is_full_page(response.text)
    html = response.text
    assert html.count("<meter") == 4 and 'src="data:image/jpeg;base64,' in html
    assert "Save to record" in html and 'action="/predictions/save"' in html
    assert stored_counts(db) == before  # predicted, not saved


def test_htmx_post_returns_only_the_result_fragment(service):
    response = post_prediction(service, chest_png(41), htmx=True, explain="gradcam")
    assert response.status_code == 200 and not is_full_page(response.text)
    html = response.text
    assert "<html" not in html and html.count("<meter") == 4
    assert 'id="view-gradcam"' in html  # Grad-CAM toggle when requested
    assert re.search(
        r'<input type="hidden" id="request_id" name="request_id" value="[0-9a-f]{32}" data-hx-swap-oob="true">', html
    )


def test_save_on_predict_redirects_to_the_stored_study(service, db):
    response = post_prediction(service, chest_png(42), save="1", patient_id="P-PAGE-SAVE")
    assert response.status_code == 303
    location = response.headers["location"]
    study = service.http.get(location)
    assert study.status_code == 200 and is_full_page(study.text)
    prediction_id = location.rsplit("/", 1)[1]
    record = db["predictions"].find_one({"_id": prediction_id})
    assert record["patient_id"] == "P-PAGE-SAVE"
    for kind in ("original", "annotated"):
        # The page's own image route, which takes the session (the API wants the bearer key).
        assert f"/predictions/{prediction_id}/image?kind={kind}" in study.text
        assert service.http.get(f"/predictions/{prediction_id}/image", params={"kind": kind}).status_code == 200
    assert service.http.get(f"/predictions/{prediction_id}/image", params={"kind": "xray"}).status_code == 400
    assert 'href="/patients?patient_id=P-PAGE-SAVE"' in study.text
    assert record["model"]["weights_sha256"][:12] in study.text
    thumb = service.http.get(f"/predictions/{prediction_id}/thumbnail")
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 160


def test_save_after_predict_stores_what_was_shown_once(service, db):
    request_id = uuid.uuid4().hex
    shown = post_prediction(service, chest_png(43), htmx=True, request_id=request_id, patient_id="P-PAGE-LATER")
    assert shown.status_code == 200 and db["predictions"].count_documents({"request_id": request_id}) == 0
    saved = save_held(service, request_id, headers=HX)
    assert saved.status_code == 200 and "Saved to the record" in saved.text
    again = save_held(service, request_id, follow_redirects=False)
    assert again.status_code == 303  # a second click lands on the same study
    assert db["predictions"].count_documents({"request_id": request_id}) == 1
    record = db["predictions"].find_one({"request_id": request_id})
    assert again.headers["location"] == f"/predictions/{record['_id']}"
    assert f"{record['confidence'] * 100:.1f}%" in shown.text


def test_save_of_an_unknown_prediction_is_refused(service, db):
    before = stored_counts(db)
    response = save_held(service, "never-predicted-1", headers=HX)
    assert response.status_code == 409 and "no longer held" in response.text
    assert stored_counts(db) == before


def test_htmx_errors_are_swapped_next_to_each_field_and_store_nothing(service, db):
    before = stored_counts(db)
    response = post_prediction(service, b"this is not an image", htmx=True, patient_id="", save="1")
    assert response.status_code == 415  # the most specific problem sets the status
    html = response.text
    assert not is_full_page(html) and 'role="alert"' in html
    assert re.search(r'id="patient_id-error"[^>]*data-hx-swap-oob="true">Enter the patient ID', html)
    assert re.search(r'id="image-error"[^>]*data-hx-swap-oob="true">This file is not a PNG, JPEG or DICOM image', html)
    assert stored_counts(db) == before


def test_too_large_upload_is_refused_with_the_message_by_the_file_field(service, db):
    before = stored_counts(db)
    response = post_prediction(service, b"\x89PNG\r\n\x1a\n" + b"\0" * (26 * 1024 * 1024), htmx=True, save="1")
    assert response.status_code == 413
    assert re.search(r'id="image-error"[^>]*>This file is larger than the upload limit', response.text)
    assert stored_counts(db) == before


def test_plain_post_error_keeps_the_chosen_file_for_the_next_attempt(service, db):
    request_id = uuid.uuid4().hex
    failed = post_prediction(service, chest_png(44), filename="chest-44.png", patient_id="", request_id=request_id)
    assert failed.status_code == 400 and is_full_page(failed.text)
    assert "Enter the patient ID" in failed.text and "Using chest-44.png" in failed.text
    assert f'value="{request_id}"' in failed.text
    # The clinician fixes the patient ID only; the file input is empty on a re-rendered page.
    retried = post_prediction(service, None, patient_id="P-PAGE-KEPT", request_id=request_id, save="1")
    assert retried.status_code == 303
    assert db["predictions"].find_one({"request_id": request_id})["patient_id"] == "P-PAGE-KEPT"


def test_database_outage_shows_the_prediction_not_saved_and_retry_saves_it(service, mongo_server, db):
    request_id = uuid.uuid4().hex
    mongo_server.stop()
    try:
        response = post_prediction(service, chest_png(45), htmx=True, save="1", request_id=request_id)
        assert response.status_code == 200 and response.text.count("<meter") == 4
        assert "Prediction shown, not saved - database unavailable" in response.text and "Retry save" in response.text
        listing = service.http.get("/patients", params={"patient_id": "P-PAGE-1"}, headers=HX)
        assert listing.status_code == 503 and "database cannot be reached" in listing.text
    finally:
        mongo_server.start()
    assert db["predictions"].count_documents({"request_id": request_id}) == 0
    retry = save_held(service, request_id, headers=HX)
    assert retry.status_code == 200 and "Saved to the record" in retry.text
    assert db["predictions"].count_documents({"request_id": request_id}) == 1


def test_patient_search_full_page_fragment_and_pagination(service):
    patient = f"P-SEARCH-{uuid.uuid4().hex[:8]}"
    for seed in range(12):
        assert service.predict(chest_png(100 + seed), patient_id=patient, save="1").json()["saved"]
    page = service.http.get("/patients", params={"patient_id": patient})
    assert page.status_code == 200 and is_full_page(page.text)
    assert page.text.count("/thumbnail") == 10 and "12 predictions" in page.text and "Page 1 of 2" in page.text
    fragment = service.http.get("/patients", params={"patient_id": patient, "page": "2"}, headers=HX)
    assert fragment.status_code == 200 and not is_full_page(fragment.text)
    assert fragment.text.count("/thumbnail") == 2 and 'rel="prev"' in fragment.text
    dates = re.findall(r"<td>(\d{4}-\d\d-\d\d \d\d:\d\d UTC)</td>", page.text)
    assert dates == sorted(dates, reverse=True)
    # History restores ask for the whole page even though they come from htmx.
    restore = service.http.get(
        "/patients", params={"patient_id": patient}, headers={**HX, "HX-History-Restore-Request": "true"}
    )
    assert is_full_page(restore.text)


def test_patient_search_rejects_bad_ids_and_reports_empty_results(service):
    bad = service.http.get("/patients", params={"patient_id": '{"$ne": null}'}, headers=HX)
    assert bad.status_code == 400 and "patient_id must be" in bad.text
    assert "&#34;$ne&#34;" in bad.text or "$ne" not in bad.text.replace("&#34;", "")
    empty = service.http.get("/patients", params={"patient_id": "P-NOBODY-1"}, headers=HX)
    assert empty.status_code == 200 and "No stored predictions" in empty.text
    blank = service.http.get("/patients")
    assert blank.status_code == 200 and "Type a patient ID" in blank.text


def test_study_and_model_pages(service):
    missing = service.http.get("/predictions/does-not-exist")
    assert missing.status_code == 404 and is_full_page(missing.text)
    model = service.http.get("/model")
    card = service.http.get("/api/v1/model").json()
    assert model.status_code == 200 and card["name"] in model.text and card["weights_sha256"] in model.text
    for label in card["labels"]:
        assert label in model.text
    assert "Out-of-scope gate" in model.text  # this test model's card records no rates: the page says so
    assert "No gate rates are recorded" in model.text


def test_every_response_carries_a_strict_content_security_policy(service):
    for path in ("/", "/patients", "/model", "/api/v1/model", f"/static/{HTMX_FILE}", "/predictions/nope"):
        response = service.http.get(path)
        csp = response.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "strict-transport-security" not in response.headers  # plain HTTP on loopback
    behind_tls = service.http.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert behind_tls.headers["strict-transport-security"].startswith("max-age=")


def test_form_posts_without_a_matching_csrf_token_are_refused_and_store_nothing(service, db):

    before = stored_counts(db)
    request_id = uuid.uuid4().hex
    # A cross-site form riding a signed-in user's credentials: no CSRF cookie (SameSite=Strict keeps
    # it home), whatever token it invents.
    with client(service.base_url, timeout=60, headers={"Authorization": f"Bearer {service.api_key}"}) as stranger:
        forged = stranger.post(
            "/predictions",
            data={"patient_id": "P-CSRF-1", "save": "1", "request_id": request_id, "csrf_token": "x" * 43},
            files={"image": ("cxr.png", chest_png(60), "image/png")},
        )
        assert forged.status_code == 403 and "expired or did not come from this site" in forged.text
        cookie = forged.headers["set-cookie"]  # the refusal page starts a proper session
        assert "SameSite=Strict" in cookie and "HttpOnly" in cookie
        assert stranger.post("/predictions/save", data={"request_id": request_id}).status_code == 403
    # Our own page's client, but the field left out.
    csrf_token(service)
    missing = service.http.post(
        "/predictions",
        data={"patient_id": "P-CSRF-1", "save": "1"},
        files={"image": ("cxr.png", chest_png(60), "image/png")},
        headers=HX,
    )
    assert missing.status_code == 403
    assert stored_counts(db) == before
    # The JSON API takes no cookies and is not a form: unaffected.
    assert service.predict(chest_png(60), patient_id="P-CSRF-1").status_code == 200
