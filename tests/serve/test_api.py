"""The Serve application end to end: real Ray, real SecantusDB, real HTTP."""

from __future__ import annotations

import io
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.helpers import j2k_codestream, make_dicom
from tests.serve.helpers import COVID4, chest_png, stored_counts
from training.synthetic import render_chest


def test_round_trip_predict_save_fetch_record_and_images(service, db):
    image = chest_png(1)
    response = service.predict(image, patient_id="RT-0001", save="true")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["probabilities"]) == set(COVID4)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["top_label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["confidence"] == body["probabilities"][body["top_label"]]
    assert body["saved"] is True and body["prediction_id"]
    assert body["model"]["weights_sha256"] and body["model"]["preprocessing_version"] == "cxr-pre-2"
    assert set(body["timings_ms"]) == {"decode", "inference", "total"}

    record = service.http.get(f"/api/v1/predictions/{body['prediction_id']}").json()
    assert record["patient_id"] == "RT-0001" and record["top_label"] == body["top_label"]
    assert record["probabilities"] == body["probabilities"]
    original = service.http.get(record["images"]["original"])
    assert original.status_code == 200 and original.content == image  # byte-for-byte the upload
    annotated = service.http.get(record["images"]["annotated"])
    assert annotated.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(annotated.content)).size == Image.open(io.BytesIO(image)).size
    assert annotated.content != image

    listing = service.http.get("/api/v1/patients/RT-0001/predictions").json()
    assert listing["total"] == 1 and listing["items"][0]["prediction_id"] == body["prediction_id"]


def test_patient_listing_is_newest_first_and_paginated(service):
    ids = [service.predict(chest_png(10 + i), patient_id="PG-0001", save="1").json()["prediction_id"] for i in range(3)]
    page1 = service.http.get("/api/v1/patients/PG-0001/predictions?page=1&page_size=2").json()
    page2 = service.http.get("/api/v1/patients/PG-0001/predictions?page=2&page_size=2").json()
    assert page1["total"] == 3
    assert [i["prediction_id"] for i in page1["items"] + page2["items"]] == ids[::-1]


def test_concurrent_requests_are_batched(service):
    images = [chest_png(100 + i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda img: service.predict(img), images))
    assert all(r.status_code == 200 for r in responses)
    assert max(r.json()["batch_size"] for r in responses) > 1


def test_gradcam_on_request(service):
    body = service.predict(chest_png(3), save="1", explain="gradcam").json()
    assert body["gradcam_label"] in COVID4
    cam = service.http.get(f"/api/v1/predictions/{body['prediction_id']}/image?kind=gradcam")
    assert cam.status_code == 200 and Image.open(io.BytesIO(cam.content)).mode == "RGB"
    # Non-degenerate: the heatmap varies over the image. Red minus blue cancels the grey radiograph
    # under the jet overlay, leaving only the heatmap's colour (constant for an all-zero CAM).
    rgb = np.asarray(Image.open(io.BytesIO(cam.content)).convert("RGB"), dtype=np.float32)
    tint = rgb[..., 0] - rgb[..., 2]
    assert tint.std() > 10 and tint.max() - tint.min() > 60, (tint.std(), tint.min(), tint.max())


def test_repeated_request_id_saves_once(service, db):
    request_id = f"req-{uuid.uuid4().hex}"
    before = stored_counts(db)
    first = service.predict(chest_png(4), save="1", request_id=request_id).json()
    second = service.predict(chest_png(4), save="1", request_id=request_id).json()
    assert first["prediction_id"] == second["prediction_id"]
    assert stored_counts(db) == (before[0] + 1, before[1] + 1)  # one record, its original


def test_concurrent_saves_with_one_request_id_store_one_record(service, db):
    request_id = f"req-{uuid.uuid4().hex}"
    before = stored_counts(db)
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda _: service.predict(chest_png(5), save="1", request_id=request_id).json(), range(2))
        )
    assert results[0]["prediction_id"] == results[1]["prediction_id"]
    assert db["predictions"].count_documents({"request_id": request_id}) == 1
    assert stored_counts(db) == (before[0] + 1, before[1] + 1)  # one record, its original


def test_unknown_ids_and_kinds(service):
    assert service.http.get("/api/v1/predictions/nope").status_code == 404
    assert service.http.get("/api/v1/predictions/nope/image?kind=xray").status_code == 400
    assert service.http.get("/api/v1/patients/$where/predictions").status_code == 400


@pytest.mark.parametrize(
    "page, page_size",
    [("0", "20"), ("-3", "20"), ("1", "101"), ("x", "20"), (str(2**62), "100"), ("1" + "0" * 30, "20")],
)
def test_page_parameters_out_of_range_are_a_400_not_a_database_error(service, page, page_size):
    api = service.http.get("/api/v1/patients/PG-0001/predictions", params={"page": page, "page_size": page_size})
    assert api.status_code == 400 and api.json()["error"]["code"] == "bad_page"
    if page_size == "20":  # the page lists a fixed number per page and has no page_size
        listing = service.http.get("/patients", params={"patient_id": "PG-0001", "page": page})
        assert listing.status_code == 400 and "page number must be a whole number" in listing.text


def test_model_card_health_and_readiness(service):
    card = service.http.get("/api/v1/model").json()
    assert card["labels"] == COVID4 and card["weights_sha256"]
    assert service.http.get("/healthz").json() == {"status": "ok"}
    assert service.http.get("/readyz").json()["checks"] == {"model": True, "database": True}
    assert service.http.get("/readyz", params={"checks": "database"}).json()["checks"] == {"database": True}
    bad = service.http.get("/readyz", params={"checks": "model,$where"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_checks"


def test_dicom_upload_takes_the_header_patient_id_and_stores_a_zeroed_preamble(service, db):
    # MONOCHROME1 stores white as the lowest value: inverted levels that decode back to the chest picture.
    pixels = 4095 - (render_chest("Normal", np.random.default_rng(7)) * 4095).astype(np.uint16)
    data = make_dicom(
        pixels, bits_stored=12, photometric="MONOCHROME1", patient_id="DCM-HDR-1", preamble=b"\x89PNG" + b"\x41" * 124
    )
    response = service.http.post(
        "/api/v1/predictions", data={"save": "1"}, files={"image": ("scan.png", data, "image/png")}
    )  # name and type ignored
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient_id"] == "DCM-HDR-1" and body["saved"] is True
    original = service.http.get(f"/api/v1/predictions/{body['prediction_id']}/image?kind=original")
    assert original.headers["content-type"] == "application/dicom"
    # Stored de-identified (PS3.15 basic profile): Patient ID and UIDs kept, the name gone, same pixels.
    assert original.content[:128] == bytes(128) and b"Doe^Jane" in data and b"Doe^Jane" not in original.content
    stored = pydicom.dcmread(io.BytesIO(original.content))
    assert stored.PatientID == "DCM-HDR-1" and stored.SOPInstanceUID == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    assert stored.DeidentificationMethod.startswith("CXR Serve")
    # A typed patient ID that contradicts the header's is refused until the clinician confirms it.
    mismatch = service.predict(data, patient_id="P-FORM-1", filename="x.dcm", save="1")
    assert mismatch.status_code == 422 and mismatch.json()["error"]["code"] == "patient_id_mismatch"
    assert mismatch.json()["error"]["field"] == "patient_id"
    confirmed = service.predict(data, patient_id="P-FORM-1", filename="x.dcm", confirm_patient_id="1")
    assert confirmed.status_code == 200 and confirmed.json()["patient_id"] == "P-FORM-1"
    same = service.predict(data, patient_id="DCM-HDR-1", filename="x.dcm")  # typed and header agree
    assert same.status_code == 200


@pytest.mark.parametrize(
    "change,status,code",
    [
        ({"modality": "CT"}, 422, "dicom_modality"),
        # A sound chest DX that is not a chest or frontal film is recorded as not analysed instead:
        # tests/serve/test_dicom_records.py. Without saving it stores nothing like these:
        ({"body_part": "ABDOMEN", "save": ""}, 422, "dicom_not_chest"),
        ({"syntax": "1.2.840.10008.1.2.4.100"}, 415, "dicom_unsupported_syntax"),
        ({"patient_id": "Doe^John"}, 400, "bad_patient_id"),  # the header's ID is validated like a typed one
        # A 40000x40000 JPEG 2000 codestream under a 32x32 header: refused before any decoder allocates it.
        (
            {
                "syntax": "1.2.840.10008.1.2.4.90",
                "encoded": j2k_codestream(np.zeros((48, 64), np.uint16), (40000, 40000)),
            },
            413,
            "too_many_pixels",
        ),
    ],
)
def test_bad_dicom_uploads_get_their_4xx_and_store_nothing(service, db, change, status, code):
    before = stored_counts(db)
    change = dict(change)  # the parameter itself is shared
    save = change.pop("save", "1")
    data = make_dicom(np.full((32, 32), 2000, np.uint16), bits_stored=12, **change)
    response = service.http.post(
        "/api/v1/predictions", data={"save": save}, files={"image": ("scan.dcm", data, "application/dicom")}
    )
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert stored_counts(db) == before


def test_a_save_stores_the_upload_as_received_and_draws_pictures_on_request(service, db):
    """One GridFS file per save (the original, byte for byte); the annotated picture is drawn from the
    record when first asked for, then served the same from the Ingress's cache, audited each time."""
    image = chest_png(61)
    body = service.predict(image, patient_id="SV-0001", save="1").json()
    stored = db["predictions"].find_one({"_id": body["prediction_id"]})
    assert set(stored["files"]) == {"original"}
    assert db["images.files"].count_documents({"metadata.prediction_id": body["prediction_id"]}) == 1
    original = db["images.chunks"].find_one({"files_id": stored["files"]["original"]})["data"]
    assert original == image[: len(original)]  # no re-encode: the stored bytes are the upload's
    url = f"/api/v1/predictions/{body['prediction_id']}/image?kind=annotated"
    exports = {"action": "export", "prediction_id": body["prediction_id"]}
    first, second = service.http.get(url), service.http.get(url)
    assert first.status_code == second.status_code == 200 and first.content == second.content
    drawn = Image.open(io.BytesIO(first.content))
    assert drawn.size == Image.open(io.BytesIO(image)).size and drawn.mode == "RGB"
    assert db["audit"].count_documents(exports) == 2  # the cached copy is audited too
    assert service.http.get(f"/api/v1/predictions/{body['prediction_id']}/image?kind=gradcam").status_code == 404
