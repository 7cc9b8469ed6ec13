"""A real PACS (Debian's Orthanc + DICOMweb) -> `cxr gateway` -> the running service -> the SR back
in the same study in Orthanc, found by QIDO-RS. Loopback only."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.helpers import OrthancServer, free_port, skip_or_fail_in_ci, study_instance
from training.synthetic import render_chest


@pytest.fixture
def pacs_and_gateway(service, keys, tmp_path):
    if not (Path("/usr/sbin/Orthanc").exists() and shutil.which("storescu")):
        skip_or_fail_in_ci("Orthanc or DCMTK is not installed (apt-get install orthanc orthanc-dicomweb dcmtk)")
    gateway_port = free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", {"ai": ["CXR_AI", "127.0.0.1", gateway_port]}).start()
    key_file = tmp_path / "api-key"
    key_file.write_text(keys.create("dicom-gateway", "gateway", 10_000)[1])  # as the README says to make it
    gateway = subprocess.Popen(
        [str(Path(sys.executable).with_name("cxr")), "gateway", "--ae-title", "CXR_AI", "--port", str(gateway_port)]
        + ["--allow-ae", "ORTHANC", "--allow-ae", "MODALITY1", "--service-url", service.base_url]
        + ["--api-key-file", str(key_file), "--spool", str(tmp_path / "spool")]
        + ["--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "--secondary-capture"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "listening" in gateway.stdout.readline()
        yield orthanc, gateway_port
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        orthanc.stop()


def structured_reports(orthanc: OrthancServer, study_uid: str, timeout_s: float = 90) -> list[dict]:
    """QIDO-RS: the SR series of ``study_uid``, polled until one appears."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = httpx.get(f"{orthanc.url}/dicom-web/studies/{study_uid}/series", params={"Modality": "SR"}).json()
        if isinstance(found, list) and found:
            return found
        time.sleep(0.5)
    return []


def text_values(item) -> set[str]:
    """Every TEXT content item's value in an SR content tree."""
    found = {item.TextValue} if getattr(item, "ValueType", "") == "TEXT" else set()
    for child in getattr(item, "ContentSequence", []):
        found |= text_values(child)
    return found


def stored_in_orthanc(orthanc: OrthancServer, path: Path) -> None:
    store = ["storescu", "-aet", "MODALITY1", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port), str(path)]
    assert subprocess.run(store, capture_output=True, timeout=60, env={"TCP_NODELAY": "1"}).returncode == 0


def delivered(db, record_id: str, timeout_s: float = 30) -> list[dict]:
    """The record's delivery entries once none is still queued or retrying."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        deliveries = db["predictions"].find_one({"_id": record_id}).get("deliveries") or []
        if deliveries and all(d["status"] in ("delivered", "dead_letter") for d in deliveries):
            return deliveries
        time.sleep(0.3)
    return db["predictions"].find_one({"_id": record_id}).get("deliveries") or []


def test_a_study_routed_by_orthanc_comes_back_with_its_structured_report(pacs_and_gateway, service, db, tmp_path):
    orthanc, _ = pacs_and_gateway
    pixels = (render_chest("COVID-19", np.random.default_rng(80)) * 4095).astype(np.uint16)
    source = tmp_path / "dx.dcm"
    source.write_bytes(study_instance(pixels, 12, "PACS-RT-1"))
    sent = pydicom.dcmread(source)
    stored_in_orthanc(orthanc, source)
    (study,) = httpx.post(f"{orthanc.url}/tools/lookup", content=sent.StudyInstanceUID).json()
    routed = httpx.post(
        f"{orthanc.url}/modalities/ai/store", json={"Resources": [study["ID"]], "Synchronous": True}, timeout=120
    )
    assert routed.status_code == 200, routed.text

    (series,) = structured_reports(orthanc, sent.StudyInstanceUID)
    instances = httpx.get(f"{orthanc.url}/dicom-web/studies/{sent.StudyInstanceUID}/series/"
                          f"{series['0020000E']['Value'][0]}/instances").json()  # fmt: skip
    sop_uid = instances[0]["00080018"]["Value"][0]
    (found,) = httpx.post(f"{orthanc.url}/tools/lookup", content=sop_uid).json()
    report = pydicom.dcmread(io.BytesIO(httpx.get(f"{orthanc.url}/instances/{found['ID']}/file").content))
    assert report.Modality == "SR" and report.VerificationFlag == "UNVERIFIED"
    assert report.PatientID == "PACS-RT-1" and "not for diagnostic use" in report.SeriesDescription
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sent.SOPInstanceUID
    record = db["predictions"].find_one({"request_id": f"dicom:{sent.SOPInstanceUID}"})
    assert record and f"weights sha256 {record['model']['weights_sha256']}" in text_values(report)
    assert record["dicom"]["study_instance_uid"] == sent.StudyInstanceUID
    # Where it came from: the PACS that routed it (the association's calling AE), for the worklist.
    assert record["dicom"]["sending_application_entity_title"] == "ORTHANC"
    # The gateway tells the service where the report went; the record page shows it.
    (delivery,) = delivered(db, record["_id"])
    assert delivery["status"] == "delivered" and delivery["report_uid"] == sop_uid
    assert delivery["destination"] == f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    # The annotated picture too, as a Secondary Capture in the same study, for viewers without SR display.
    captures = httpx.get(f"{orthanc.url}/dicom-web/studies/{sent.StudyInstanceUID}/series", params={"Modality": "OT"})
    (capture,) = captures.json()
    assert capture["0008103E"]["Value"][0] == "CXR AI triage annotated image - not for diagnostic use"
    page = service.http.get(f"/predictions/{record['_id']}").text
    assert "Structured report to the PACS" in page and "delivered" in page and sent.AccessionNumber in page


def test_an_instance_stored_by_stow_rs_gets_its_structured_report_in_the_pacs(
    pacs_and_gateway, service, db, keys, tmp_path
):
    """A DICOMweb router (dicomweb-client here) sends to the service, not to the gateway: the gateway
    claims the record's results from the service and delivers them to the PACS, in the same study."""
    orthanc, _ = pacs_and_gateway
    pixels = (render_chest("Lung Opacity", np.random.default_rng(81)) * 4095).astype(np.uint16)
    source = tmp_path / "stow-dx.dcm"
    source.write_bytes(study_instance(pixels, 13, "PACS-STOW-1"))
    sent = pydicom.dcmread(source)
    stored_in_orthanc(orthanc, source)  # the modality's copy; the router's goes to the service
    _, token = keys.create("dicomweb-router", "integration", 10_000)
    web = DICOMwebClient(f"{service.base_url}/dicomweb", headers={"Authorization": f"Bearer {token}"})
    answer = web.store_instances([sent])
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [sent.SOPInstanceUID]

    (series,) = structured_reports(orthanc, sent.StudyInstanceUID)
    (instance,) = httpx.get(f"{orthanc.url}/dicom-web/studies/{sent.StudyInstanceUID}/series/"
                            f"{series['0020000E']['Value'][0]}/instances").json()  # fmt: skip
    (found,) = httpx.post(f"{orthanc.url}/tools/lookup", content=instance["00080018"]["Value"][0]).json()
    report = pydicom.dcmread(io.BytesIO(httpx.get(f"{orthanc.url}/instances/{found['ID']}/file").content))
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sent.SOPInstanceUID
    assert report.PatientID == "PACS-STOW-1" and report.VerificationFlag == "UNVERIFIED"
    record = db["predictions"].find_one({"dicom.sop_instance_uid": sent.SOPInstanceUID})
    assert record["created_by"] == "dicomweb-router" and record["results_due"] is False
    assert f"weights sha256 {record['model']['weights_sha256']}" in text_values(report)
    (delivery,) = delivered(db, record["_id"])
    assert delivery["status"] == "delivered" and delivery["report_uid"] == report.SOPInstanceUID
    # Sent again by the router: the same record, nothing due again, no second report in the PACS.
    web.store_instances([sent])
    assert db["predictions"].find_one({"_id": record["_id"]})["results_due"] is False
    assert len(structured_reports(orthanc, sent.StudyInstanceUID)) == 1
