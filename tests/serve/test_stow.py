"""STOW-RS (PS3.18) on the Ingress, sent by a real DICOMweb client (dicomweb-client) and by hand:
per-instance outcomes in the DICOM JSON store response, statuses 200/202/409, and bad requests
refused whole with nothing stored."""

from __future__ import annotations

import io

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from requests import HTTPError

from tests.serve.helpers import chest_dicom, stored_counts, uid_of

REFERENCED, FAILED, FAILURE_REASON, INSTANCE = "00081199", "00081198", "00081197", "00081155"
CANNOT_UNDERSTAND, DOES_NOT_MATCH = 0xC000, 0xA900


def dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def multipart(*parts: bytes, boundary: str = "b0undary", part_type: str = "application/dicom") -> tuple[dict, bytes]:
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    body += f"--{boundary}--\r\n".encode()
    return {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}, body


def outcome(response) -> tuple[list[str], list[tuple[str | None, int]]]:
    """(stored SOP Instance UIDs, [(failed UID if known, Failure Reason)]) from a store response."""
    body = response.json()
    stored = [item[INSTANCE]["Value"][0] for item in body.get(REFERENCED, {}).get("Value", [])]
    failed = [
        ((item.get(INSTANCE) or {"Value": [None]})["Value"][0], item[FAILURE_REASON]["Value"][0])
        for item in body.get(FAILED, {}).get("Value", [])
    ]
    return stored, failed


def test_dicomweb_client_stores_a_study_as_records_with_identifiers(service, db):
    web = DICOMwebClient(f"{service.base_url}/dicomweb", headers={"Authorization": f"Bearer {service.api_key}"})
    good = chest_dicom(400, "STOW-0001")
    knee = chest_dicom(401, "STOW-0001", body_part="KNEE")
    answer = web.store_instances([dataset(good), dataset(knee)])
    stored = [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence]
    assert stored == [uid_of(good), uid_of(knee)] and "FailedSOPSequence" not in answer
    analysed = db["predictions"].find_one({"dicom.sop_instance_uid": uid_of(good)})
    assert analysed["status"] == "analysed" and analysed["request_id"] == f"dicom:{uid_of(good)}"
    assert analysed["patient_id"] == "STOW-0001" and analysed["dicom"]["accession_number"] == "ACC-STOW-0001"
    not_analysed = db["predictions"].find_one({"dicom.sop_instance_uid": uid_of(knee)})
    assert not_analysed["status"] == "not_analysed" and not_analysed["not_analysed"]["code"] == "dicom_not_chest"

    web.store_instances([dataset(good)])  # sent again: the same record
    assert db["predictions"].count_documents({"dicom.sop_instance_uid": uid_of(good)}) == 1


def test_a_corrupt_instance_fails_alone_with_its_reason_and_the_rest_are_stored(service, db):
    good = chest_dicom(402, "STOW-0002")
    corrupt = b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00garbage" * 10
    headers, body = multipart(good, corrupt)
    response = service.http.post("/dicomweb/studies", content=body, headers=headers)
    assert response.status_code == 202 and response.headers["content-type"].startswith("application/dicom+json")
    stored, failed = outcome(response)
    assert stored == [uid_of(good)] and [reason for _, reason in failed] == [CANNOT_UNDERSTAND]
    assert response.headers.get_list("warning") and response.headers["warning"].startswith("299 ")


def test_all_failed_is_409_and_another_study_in_the_path_is_refused_per_instance(service, db):
    before = stored_counts(db)
    headers, body = multipart(b"not dicom at all", b"\x00" * 132)
    response = service.http.post("/dicomweb/studies", content=body, headers=headers)
    assert response.status_code == 409 and outcome(response) == ([], [(None, CANNOT_UNDERSTAND)] * 2)
    instance = chest_dicom(403, "STOW-0003")
    headers, body = multipart(instance)
    response = service.http.post("/dicomweb/studies/1.2.3.999", content=body, headers=headers)
    assert response.status_code == 409 and outcome(response)[1] == [(uid_of(instance), DOES_NOT_MATCH)]
    assert stored_counts(db) == before
    study = dataset(instance).StudyInstanceUID
    response = service.http.post(f"/dicomweb/studies/{study}", content=body, headers=headers)
    assert response.status_code == 200 and outcome(response)[0] == [uid_of(instance)]


@pytest.mark.parametrize(
    "content_type,status",
    [
        ("application/dicom", 415),
        ("multipart/form-data; boundary=b0undary", 415),
        ('multipart/related; type="image/png"; boundary=b0undary', 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
    ],
)
def test_a_body_that_is_not_a_stow_request_is_refused_whole(service, db, content_type, status):
    _, body = multipart(chest_dicom(404, "STOW-0004"))
    before = stored_counts(db)
    response = service.http.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status and stored_counts(db) == before


def test_attackers_without_a_key_or_with_too_many_parts_store_nothing(service, db):
    before = stored_counts(db)
    headers, body = multipart(chest_dicom(405, "STOW-0005"))
    assert service.anonymous.post("/dicomweb/studies", content=body, headers=headers).status_code == 401
    bogus = {**headers, "Authorization": "Bearer forged-key"}
    assert service.anonymous.post("/dicomweb/studies", content=body, headers=bogus).status_code == 401
    many_headers, many = multipart(*([b"x"] * 200))
    assert service.http.post("/dicomweb/studies", content=many, headers=many_headers).status_code == 413
    png_part = multipart(chest_dicom(406, "STOW-0005"), part_type="image/png")
    assert service.http.post("/dicomweb/studies", content=png_part[1], headers=png_part[0]).status_code == 415
    assert stored_counts(db) == before


def test_a_wrong_accept_is_406(service):
    headers, body = multipart(chest_dicom(407, "STOW-0006"))
    response = service.http.post("/dicomweb/studies", content=body, headers={**headers, "Accept": "text/html"})
    assert response.status_code == 406


def test_dicomweb_client_sees_a_refused_store_as_an_error(service):
    web = DICOMwebClient(f"{service.base_url}/dicomweb", headers={"Authorization": "Bearer nope"})
    with pytest.raises(HTTPError):
        web.store_instances([dataset(chest_dicom(408, "STOW-0007"))])
