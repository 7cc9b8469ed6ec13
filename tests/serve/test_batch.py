"""POST /api/v1/predictions:batch against the live service: per-item answers, nothing lost, limits."""

from __future__ import annotations

import json
import uuid

from tests.serve.helpers import chest_png, client, stored_counts

BATCH = "/api/v1/predictions:batch"


def post_batch(http, items: list[dict], images: list[bytes]):
    files = [("image", (f"cxr{i}.png", image, "image/png")) for i, image in enumerate(images)]
    return http.post(BATCH, data={"items": json.dumps(items)}, files=files)


def test_each_image_is_answered_with_its_own_status_and_only_good_ones_are_stored(service, db):
    before = stored_counts(db)
    items = [
        {"patient_id": "BA-0001", "save": True},
        {"patient_id": "BA-0002"},
        {"patient_id": "BA-0003", "save": True},  # not an image: refused alone
        {"patient_id": "bad id!", "save": True},  # bad patient ID: refused alone
    ]
    images = [chest_png(301), chest_png(302), b"not an image at all", chest_png(303)]
    response = post_batch(service.http, items, images)
    assert response.status_code == 200, response.text
    answers = response.json()["items"]
    assert [a["index"] for a in answers] == [0, 1, 2, 3]
    assert [a["status"] for a in answers[:2]] == [200, 200]
    assert answers[2]["status"] in (400, 415, 422) and answers[2]["error"]["field"] == "image"
    assert answers[3]["status"] == 400 and answers[3]["error"]["code"] == "bad_patient_id"
    assert [a["patient_id"] for a in answers[:2]] == ["BA-0001", "BA-0002"]
    assert answers[0]["saved"] is True and (answers[1]["saved"], answers[1]["prediction_id"]) == (False, None)
    stored = service.http.get(f"/api/v1/predictions/{answers[0]['prediction_id']}").json()
    assert stored["patient_id"] == "BA-0001" and stored["probabilities"] == answers[0]["probabilities"]
    assert stored_counts(db)[0] == before[0] + 1  # only the one good image asked to be saved


def test_a_repeated_request_id_inside_one_batch_stores_once(service, db):
    """Two items racing with one idempotency key: one record, both answered with it."""
    request_id = f"batch-{uuid.uuid4().hex}"
    image = chest_png(310)
    before = stored_counts(db)[0]
    items = [{"patient_id": "BA-0010", "save": True, "request_id": request_id}] * 2
    answers = post_batch(service.http, items, [image, image]).json()["items"]
    assert [a["status"] for a in answers] == [200, 200]
    assert answers[0]["prediction_id"] == answers[1]["prediction_id"]
    assert stored_counts(db)[0] == before + 1


def test_malformed_batches_are_refused_whole_and_store_nothing(service, db):
    before = stored_counts(db)
    image = chest_png(320)
    cases = [
        (lambda: post_batch(service.http, [{"patient_id": "BA-0020"}], [image, image]), 400, "items_mismatch"),
        (lambda: post_batch(service.http, [{"patient_id": "BA-0020", "save": 1}], [image]), 400, "bad_items"),
        (lambda: post_batch(service.http, [{"patient_id": "BA-0020", "role": "admin"}], [image]), 400, "bad_items"),
        (lambda: post_batch(service.http, [], []), 415, "not_multipart"),  # nothing to upload: not even multipart
        (
            lambda: service.http.post(BATCH, data={"items": "[]"}, files=[("note", ("a.txt", b"x", "text/plain"))]),
            400,
            "missing_image",
        ),
        (
            lambda: service.http.post(BATCH, data={"items": "[{"}, files=[("image", ("a.png", image, "image/png"))]),
            400,
            "bad_items",
        ),
        (lambda: service.http.post(BATCH, files=[("image", ("a.png", image, "image/png"))]), 400, "missing_items"),
        (lambda: service.http.post(BATCH, json=[{"patient_id": "BA-0020"}]), 415, "not_multipart"),
    ]
    for send, status, code in cases:
        response = send()
        assert response.status_code == status, response.text
        if code:
            assert response.json()["error"]["code"] == code
    assert stored_counts(db) == before


def test_more_images_than_allowed_are_refused(service, db):
    before = stored_counts(db)
    count = 17  # CXR_MAX_BATCH_ITEMS defaults to 16
    response = post_batch(service.http, [{"patient_id": "BA-0030", "save": True}] * count, [chest_png(330)] * count)
    assert response.status_code == 400 and "at most 16 images" in response.json()["error"]["message"]
    assert stored_counts(db) == before


def test_every_image_of_a_batch_counts_against_the_rate_limit(service, keys):
    _, token = keys.create("batch-rate", "clinician", 5)
    http = client(service.base_url, timeout=120, headers={"Authorization": f"Bearer {token}"})
    items = [{"patient_id": f"BA-004{i}"} for i in range(4)]
    first = post_batch(http, items, [chest_png(340 + i) for i in range(4)])
    assert first.status_code == 200 and {a["status"] for a in first.json()["items"]} == {200}
    second = post_batch(http, items[:2], [chest_png(350), chest_png(351)])  # 4 + 2 > 5 per minute
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
