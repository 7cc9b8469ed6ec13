"""DICOM instances as records, over real HTTP against the running service and the real database:
their identifiers stored and indexed, one record per SOP Instance UID whoever sends it, instances the
model does not read kept as not analysed, the gateway's delivery reports, and FHIR R4 reports."""

from __future__ import annotations

import io
import uuid

import pydicom
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.operationoutcome import OperationOutcome
from PIL import Image

from tests.serve.helpers import chest_dicom, client, stored_counts, uid_of


def post_dicom(http, data: bytes, **fields):
    return http.post(
        "/api/v1/predictions", data={"save": "1", **fields}, files={"image": ("i.dcm", data, "application/dicom")}
    )


@pytest.fixture()
def other_caller(service, keys):
    """A second clinician's key: another caller, another request-id scope."""
    _, token = keys.create(f"other-{uuid.uuid4().hex[:6]}", "clinician", 10_000)
    with client(service.base_url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as http:
        yield http


def test_a_dicom_record_carries_its_identifiers_and_they_are_indexed(service, db):
    data = chest_dicom(300, "DR-0001", AccessionNumber="ACC-300")
    answer = post_dicom(service.http, data).json()
    record = service.http.get(f"/api/v1/predictions/{answer['prediction_id']}").json()
    assert record["status"] == "analysed" and record["patient_id"] == "DR-0001"
    dicom = record["dicom"]
    assert dicom["sop_instance_uid"] == uid_of(data) and dicom["accession_number"] == "ACC-300"
    assert dicom["modality"] == "DX" and dicom["body_part_examined"] == "CHEST" and dicom["view_position"] == "PA"
    assert dicom["study_instance_uid"] and dicom["series_instance_uid"] and dicom["sop_class_uid"]
    indexes = db["predictions"].index_information()
    assert indexes["sop_instance_unique"]["unique"] and "study" in indexes and "accession" in indexes
    page = service.http.get(f"/predictions/{answer['prediction_id']}")
    assert "ACC-300" in page.text and dicom["study_instance_uid"] in page.text  # the UI shows them
    # The API serves the original as received (the DICOM file); the page's <img> gets a PNG of it.
    api_original = service.http.get(f"/api/v1/predictions/{answer['prediction_id']}/image?kind=original")
    assert api_original.headers["content-type"] == "application/dicom"
    shown = service.http.get(f"/predictions/{answer['prediction_id']}/image?kind=original")
    assert shown.headers["content-type"] == "image/png" and Image.open(io.BytesIO(shown.content)).size == (
        pydicom.dcmread(io.BytesIO(data)).Columns,
        pydicom.dcmread(io.BytesIO(data)).Rows,
    )


def test_resending_an_instance_from_any_caller_is_one_record_and_another_image_under_its_uid_is_refused(
    service, db, other_caller
):
    data = chest_dicom(301, "DR-0002")
    first = post_dicom(service.http, data).json()
    again = post_dicom(other_caller, data).json()  # another caller, another (random) request id
    assert again["saved"] and again["prediction_id"] == first["prediction_id"]
    assert db["predictions"].count_documents({"dicom.sop_instance_uid": uid_of(data)}) == 1

    before = stored_counts(db)
    forged = chest_dicom(302, "DR-0002", SOPInstanceUID=uid_of(data))  # other pixels, same UID
    refused = post_dicom(other_caller, forged)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "sop_instance_conflict"
    assert stored_counts(db) == before  # nothing stored, not even the image


@pytest.mark.parametrize(
    "attributes,code",
    [({"body_part": "KNEE"}, "dicom_not_chest"), ({"ViewPosition": "LL"}, "dicom_not_frontal")],
)
def test_a_non_chest_or_lateral_instance_is_recorded_as_not_analysed_and_never_labelled(service, db, attributes, code):
    data = chest_dicom(303, "DR-0003", **attributes)
    answer = post_dicom(service.http, data)
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == code and error["saved"] is True
    record = service.http.get(f"/api/v1/predictions/{error['prediction_id']}").json()
    assert record["status"] == "not_analysed" and record["not_analysed"]["code"] == code
    assert not {"probabilities", "top_label", "confidence"} & set(record)
    assert record["dicom"]["sop_instance_uid"] == uid_of(data) and record["images"] == {}
    image = service.http.get(f"/api/v1/predictions/{error['prediction_id']}/image")
    assert image.status_code == 404  # kept as received, never drawn
    again = post_dicom(service.http, data)  # the PACS resends it: the same record, still 422
    assert again.status_code == 422 and again.json()["error"]["prediction_id"] == error["prediction_id"]
    page = service.http.get(f"/predictions/{error['prediction_id']}")
    assert page.status_code == 200 and "Not analysed" in page.text
    listing = service.http.get("/patients", params={"patient_id": "DR-0003"})
    assert "Not analysed" in listing.text


def test_refusals_of_a_png_or_without_saving_store_nothing(service, db):
    before = stored_counts(db)
    lateral = chest_dicom(304, "DR-0004", ViewPosition="LL")
    assert post_dicom(service.http, lateral, save="").status_code == 422  # not asked to save
    corrupt = chest_dicom(305, "DR-0004")[:400]  # a header cut short: nothing to identify it by
    assert post_dicom(service.http, corrupt).status_code in (400, 415, 422)
    assert stored_counts(db) == before


def test_the_gateway_reports_deliveries_which_the_record_and_page_show(service, db):
    answer = post_dicom(service.http, chest_dicom(306, "DR-0005")).json()
    url = f"/api/v1/predictions/{answer['prediction_id']}/deliveries"
    report = {"destination": "PACS@10.0.0.5:104", "status": "retrying", "attempts": 1, "error": "association failed"}
    assert service.http.post(url, json=report).status_code == 204
    delivered = {"destination": "PACS@10.0.0.5:104", "status": "delivered", "attempts": 2, "report_uid": "1.2.3.4"}
    assert service.http.post(url, json=delivered).status_code == 204
    (entry,) = service.http.get(f"/api/v1/predictions/{answer['prediction_id']}").json()["deliveries"]
    assert entry["status"] == "delivered" and entry["attempts"] == 2 and entry["report_uid"] == "1.2.3.4"
    page = service.http.get(f"/predictions/{answer['prediction_id']}").text
    assert "PACS@10.0.0.5:104" in page and "delivered" in page
    audited = {e["detail"] for e in db["audit"].find({"action": "delivery", "prediction_id": answer["prediction_id"]})}
    assert audited == {"retrying to PACS@10.0.0.5:104", "delivered to PACS@10.0.0.5:104"}


def test_a_caller_cannot_grow_a_record_without_bound_through_delivery_reports(service, db):
    answer = post_dicom(service.http, chest_dicom(311, "DR-0009")).json()
    url = f"/api/v1/predictions/{answer['prediction_id']}/deliveries"
    for i in range(20):
        delivery = {"destination": f"PACS{i}@10.0.0.{i}:104", "status": "delivered", "attempts": 1}
        assert service.http.post(url, json=delivery).status_code == 204
    one_more = {"destination": "PACS20@10.0.0.20:104", "status": "delivered", "attempts": 1}
    refused = service.http.post(url, json=one_more)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "too_many_destinations"
    again = {"destination": "PACS3@10.0.0.3:104", "status": "dead_letter", "attempts": 20}
    assert service.http.post(url, json=again).status_code == 204  # a listed one is still updated
    deliveries = db["predictions"].find_one({"_id": answer["prediction_id"]})["deliveries"]
    assert len(deliveries) == 20 and {d["status"] for d in deliveries} == {"delivered", "dead_letter"}


@pytest.mark.parametrize(
    "body",
    [
        {"destination": "", "status": "delivered", "attempts": 1},
        {"destination": "X", "status": "lost", "attempts": 1},
        {"destination": "X", "status": "delivered", "attempts": -1},
        {"destination": "X", "status": "delivered", "attempts": True},
        {"destination": "X", "status": "delivered", "attempts": 1, "report_uid": "1.2.x"},
        {"destination": "X", "status": "delivered", "attempts": 1, "report_uid": "1." + "2" * 70},
        {"destination": "X\n<script>", "status": "delivered", "attempts": 1},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_delivery_report_is_refused_and_changes_nothing(service, db, body):
    answer = post_dicom(service.http, chest_dicom(307, "DR-0006")).json()
    url = f"/api/v1/predictions/{answer['prediction_id']}/deliveries"
    assert service.http.post(url, json=body).status_code == 400
    assert "deliveries" not in db["predictions"].find_one({"_id": answer["prediction_id"]})


def test_an_integration_cannot_report_on_or_read_a_record_it_did_not_send(service, keys):
    _, token = keys.create(f"bridge-{uuid.uuid4().hex[:6]}", "integration", 10_000)
    answer = post_dicom(service.http, chest_dicom(308, "DR-0007")).json()
    delivery = {"destination": "EVIL@1.2.3.4:104", "status": "delivered", "attempts": 1}
    with client(service.base_url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as bridge:
        url = f"/api/v1/predictions/{answer['prediction_id']}/deliveries"
        assert bridge.post(url, json=delivery).status_code == 404
        assert bridge.get(f"/fhir/DiagnosticReport/{answer['prediction_id']}").status_code == 404
    assert "deliveries" not in service.http.get(f"/api/v1/predictions/{answer['prediction_id']}").json()


def test_fhir_diagnostic_reports_validate_as_fhir_and_reference_the_imaging_study(service):
    data = chest_dicom(309, "DR-0008")
    answer = post_dicom(service.http, data).json()
    response = service.http.get(f"/fhir/DiagnosticReport/{answer['prediction_id']}")
    assert response.headers["content-type"].startswith("application/fhir+json")
    report = DiagnosticReport.model_validate(response.json())
    assert report.status == "preliminary" and report.subject.identifier.value == "DR-0008"
    study = service.http.get(f"/api/v1/predictions/{answer['prediction_id']}").json()["dicom"]["study_instance_uid"]
    (imaging,) = report.imagingStudy
    assert imaging.type == "ImagingStudy" and imaging.identifier.system == "urn:dicom:uid"
    assert imaging.identifier.value == f"urn:oid:{study}"
    by_label = {o.code.text: o for o in report.contained}
    assert set(by_label) == set(answer["probabilities"]) and len(report.result) == len(by_label)
    for label, observation in by_label.items():
        assert float(observation.valueQuantity.value) == pytest.approx(answer["probabilities"][label], abs=1e-6)
        expected = "POS" if label in answer["positives"] else "NEG"
        assert observation.interpretation[0].coding[0].code == expected

    lateral = post_dicom(service.http, chest_dicom(310, "DR-0008", ViewPosition="LL")).json()["error"]
    cancelled = DiagnosticReport.model_validate(
        service.http.get(f"/fhir/DiagnosticReport/{lateral['prediction_id']}").json()
    )
    assert cancelled.status == "cancelled" and not cancelled.contained and "Not analysed" in cancelled.conclusion

    missing = service.http.get("/fhir/DiagnosticReport/no-such-report")
    assert missing.status_code == 404
    assert OperationOutcome.model_validate(missing.json()).issue[0].code == "not-found"
    assert service.anonymous.get(f"/fhir/DiagnosticReport/{answer['prediction_id']}").status_code == 401
