"""The reading room over real HTTP against the running service and the real database: the worklist
in reading order, claims between two radiologists, reviews (append-only, superseding, audited),
every role but radiologist refused, and the agreement figures and gauges that follow."""

from __future__ import annotations

import io
import uuid

import pydicom
import pytest

from tests.serve.helpers import chest_dicom, chest_png, client, metric_total, wait_until


def caller(service, keys, role: str, name: str | None = None):
    name = name or f"{role}-{uuid.uuid4().hex[:6]}"
    _, token = keys.create(name, role, 10_000)
    return client(service.base_url, timeout=120, headers={"Authorization": f"Bearer {token}"}), name


@pytest.fixture()
def ward(service, keys):
    """A ward's own key: the worklist's source filter then shows only this test's studies."""
    http, name = caller(service, keys, "clinician", f"ward-{uuid.uuid4().hex[:6]}")
    with http:
        yield http, name


@pytest.fixture()
def radiologists(service, keys):
    (a, name_a), (b, name_b) = caller(service, keys, "radiologist"), caller(service, keys, "radiologist")
    with a, b:
        yield (a, name_a), (b, name_b)


def send(http, seed: int, patient: str) -> dict:
    response = http.post(
        "/api/v1/predictions",
        data={"patient_id": patient, "save": "1"},
        files={"image": ("cxr.png", chest_png(seed), "image/png")},
    )
    assert response.status_code == 200, response.text
    return response.json()


def worklist(http, source: str, **filters) -> list[dict]:
    response = http.get("/api/v1/worklist", params={"source": source, **filters})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def from_modality(seed: int, patient: str, sending_ae: str) -> bytes:
    """A DX as the DICOM gateway forwards it: the calling AE in its File Meta Information."""
    ds = pydicom.dcmread(io.BytesIO(chest_dicom(seed, patient)))
    ds.file_meta.SendingApplicationEntityTitle = sending_ae
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_dicom_study_is_listed_and_filtered_by_the_ae_that_sent_it(service, ward):
    """One gateway key serves many modalities: the worklist tells them apart by sending AE title."""
    http, gateway_key = ward
    titles = [f"DX{uuid.uuid4().hex[:6].upper()}", f"ER{uuid.uuid4().hex[:6].upper()}"]
    sent = {}
    for seed, title in enumerate(titles):
        response = http.post(
            "/api/v1/predictions",
            data={"patient_id": f"AE-{seed}", "save": "1"},
            files={"image": ("dx.dcm", from_modality(700 + seed, f"AE-{seed}", title), "application/dicom")},
        )
        assert response.status_code == 200, response.text
        sent[title] = response.json()["prediction_id"]
    for title, prediction_id in sent.items():
        (item,) = worklist(service.http, title)
        assert (item["prediction_id"], item["source"], item["via"]) == (prediction_id, title, gateway_key)
    assert worklist(service.http, gateway_key) == []  # listed under their AE titles, not the key
    page = service.http.get("/worklist", params={"source": titles[0]}).text
    assert f'<option value="{titles[1]}"' in page and f"via {gateway_key}" in page and "AE-1" not in page


def test_the_worklist_orders_by_urgency_then_age_and_filters(service, ward):
    http, source = ward
    sent = [send(http, 900 + i, f"WL-{i}") for i in range(4)]
    items = worklist(service.http, source)
    assert {i["prediction_id"] for i in items} == {s["prediction_id"] for s in sent}
    keys = [(-i["urgency"], i["created_at"]) for i in items]  # nothing here has waited 4 h
    assert keys == sorted(keys) and not any(i["escalated"] for i in items)
    for item in items:
        assert item["band"] in ("urgent", "soon", "routine") and item["source"] == source and item["driver"]
    band = items[0]["band"]
    assert {i["prediction_id"] for i in worklist(service.http, source, band=band)} == {
        i["prediction_id"] for i in items if i["band"] == band
    }
    assert worklist(service.http, source, since="2999-01-01") == []
    assert worklist(service.http, f"{source}-nobody") == []
    for bad in ({"band": "asap"}, {"since": "yesterday"}, {"since": "2026-02-02", "until": "2026-02-01"}):
        assert service.http.get("/api/v1/worklist", params=bad).status_code == 400


def test_two_radiologists_never_read_the_same_study(service, ward, radiologists):
    http, source = ward
    study = send(http, 910, "WL-CLAIM")["prediction_id"]
    (a, name_a), (b, name_b) = radiologists
    claimed = a.post(f"/api/v1/worklist/{study}/claim")
    assert claimed.status_code == 200 and claimed.json()["reading_by"] == name_a
    refused = b.post(f"/api/v1/worklist/{study}/claim")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "being_read"
    assert refused.json()["error"]["reading_by"] == name_a
    (entry,) = [i for i in worklist(service.http, source) if i["prediction_id"] == study]
    assert entry["reading_by"] == name_a
    assert a.post(f"/api/v1/worklist/{study}/claim").status_code == 200  # the holder renews
    assert b.delete(f"/api/v1/worklist/{study}/claim").status_code == 404  # not theirs to release
    assert a.delete(f"/api/v1/worklist/{study}/claim").status_code == 204
    assert b.post(f"/api/v1/worklist/{study}/claim").status_code == 200
    assert a.post("/api/v1/worklist/no-such-record/claim").status_code == 404


def test_reviews_are_append_only_superseding_and_audited(service, ward, radiologists, db):
    http, source = ward
    answer = send(http, 920, "WL-REVIEW")
    study, top = answer["prediction_id"], answer["top_label"]
    (a, name_a), (b, name_b) = radiologists
    other = next(label for label in answer["probabilities"] if label != top)
    assert a.post(f"/api/v1/worklist/{study}/claim").status_code == 200
    first = a.post(f"/api/v1/predictions/{study}/reviews", json={"verdict": "agree", "comment": "clear"})
    assert first.status_code == 201, first.text
    assert first.json()["findings"] == [top] and first.json()["predicted"] == [top]
    assert study not in {i["prediction_id"] for i in worklist(service.http, source)}  # it left the worklist
    assert db["predictions"].find_one({"_id": study}).get("reading") is None  # the claim ended with it
    second = b.post(f"/api/v1/predictions/{study}/reviews", json={"verdict": "disagree", "findings": [other]})
    assert second.status_code == 201 and second.json()["supersedes"] == first.json()["review_id"]
    history = service.http.get(f"/api/v1/predictions/{study}/reviews").json()["items"]
    assert [r["reviewer"] for r in history] == [name_b, name_a]  # newest first; nothing deleted
    record = service.http.get(f"/api/v1/predictions/{study}").json()
    assert record["review"]["verdict"] == "disagree" and record["review"]["findings"] == [other]
    audited = list(db["audit"].find({"prediction_id": study, "action": "review"}))
    assert {e["actor"] for e in audited} == {name_a, name_b}
    page = service.http.get(f"/predictions/{study}").text
    assert "Radiologist review" in page and name_b in page and "supersedes 1 earlier review" in page


@pytest.mark.parametrize(
    "body, status",
    [
        ({"verdict": "maybe"}, 400),
        ({"verdict": "disagree"}, 400),  # no findings
        ({"verdict": "disagree", "findings": "COVID-19"}, 400),
        ({"verdict": "agree", "comment": "x" * 2001}, 400),
        ({"verdict": "agree", "comment": "bell \x07"}, 400),
        ({"verdict": "disagree", "findings": ["Pneumothorax"]}, 422),  # not a label of this model
        ({"verdict": "disagree", "findings": ["COVID-19", "Normal"]}, 422),  # a softmax model gives one label
        ({"verdict": "agree", "findings": ["__other__"]}, 422),  # agreeing keeps the model's findings
        ({"verdict": "disagree", "findings": ["__own__"]}, 422),  # the model's own call is no disagreement
    ],
)
def test_a_malformed_review_is_refused_and_stores_nothing(service, ward, radiologists, db, body, status):
    http, _ = ward
    answer = send(http, 930, "WL-BAD")
    other = next(k for k in answer["probabilities"] if k != answer["top_label"])
    stand_in = {"__other__": other, "__own__": answer["top_label"]}
    body = body | (
        {"findings": [stand_in.get(f, f) for f in body["findings"]]} if isinstance(body.get("findings"), list) else {}
    )
    (a, _), _ = radiologists
    before = db["reviews"].count_documents({})
    response = a.post(f"/api/v1/predictions/{answer['prediction_id']}/reviews", json=body)
    assert response.status_code == status, response.text
    assert db["reviews"].count_documents({}) == before
    assert "review" not in db["predictions"].find_one({"_id": answer["prediction_id"]})


@pytest.mark.parametrize("role", ["clinician", "integration", "gateway", "auditor"])
def test_only_a_radiologist_may_claim_or_review(service, ward, keys, db, role):
    http, _ = ward
    study = send(http, 940, "WL-ROLE")["prediction_id"]
    intruder, _ = caller(service, keys, role)
    with intruder:
        assert intruder.post(f"/api/v1/worklist/{study}/claim").status_code == 403
        review = intruder.post(f"/api/v1/predictions/{study}/reviews", json={"verdict": "agree"})
        assert review.status_code == 403
        if role in ("integration", "gateway", "auditor"):  # the worklist shows every patient: READ only
            assert intruder.get("/api/v1/worklist").status_code == 403
    assert db["reviews"].count_documents({"prediction_id": study}) == 0
    assert "reading" not in db["predictions"].find_one({"_id": study})


def test_agreement_figures_and_gauges_follow_the_reviews(service, ward, radiologists, ray_metrics_url):
    http, _ = ward
    (a, _), _ = radiologists
    version = service.http.get("/api/v1/model").json()["version"]

    def figures() -> dict:
        models = service.http.get("/api/v1/monitoring/agreement").json()["models"]
        return next((m for m in models if m["model_version"] == version), {"reviewed": 0, "agreement": {"k": 0}})

    before = figures()
    agreed, disagreed = send(http, 950, "WL-AGR-1"), send(http, 951, "WL-AGR-2")
    a.post(f"/api/v1/predictions/{agreed['prediction_id']}/reviews", json={"verdict": "agree"})
    other = next(k for k in disagreed["probabilities"] if k != disagreed["top_label"])
    body = {"verdict": "disagree", "findings": [other]}
    assert a.post(f"/api/v1/predictions/{disagreed['prediction_id']}/reviews", json=body).status_code == 201
    after = figures()
    assert after["reviewed"] == before["reviewed"] + 2
    assert after["agreement"]["k"] == before["agreement"]["k"] + 1
    rate = after["agreement"]
    assert rate["low"] <= rate["value"] <= rate["high"] and 0 <= rate["low"] and rate["high"] <= 1
    by_label = {row["label"]: row for row in after["labels"]}
    assert by_label[other]["sensitivity"]["n"] >= 1  # the radiologist found it; the model did not call it
    page = service.http.get("/monitoring").text
    assert version in page and "agreement" in page
    # The same figure as a Prometheus gauge, exported by the ResultStore.
    expected = rate["value"]
    wait_until(
        lambda: (
            abs(metric_total(ray_metrics_url, "ray_cxr_review_agreement_ratio", model_version=version) - expected)
            < 1e-6
        ),
        60,
        "the agreement gauge to be exported",
    )
