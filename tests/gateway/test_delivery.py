"""Results back to the PACS: C-STORE of the SR into a real Orthanc, retries, and the dead-letter list."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from cxr_model.structured_report import build_report
from gateway.delivery import Destination, StowDestination, dead_letters, make_sender, outboxes
from gateway.forwarder import PREDICTION_SUFFIX
from tests.helpers import OrthancServer, free_port, skip_or_fail_in_ci, study_instance
from training.synthetic import render_chest

MODEL = {"name": "cxr-test", "version": "1", "weights_sha256": "cd" * 32}


def report_file(seed: int) -> tuple[str, bytes]:
    pixels = (render_chest("Normal", np.random.default_rng(seed)) * 4095).astype(np.uint16)
    source = pydicom.dcmread(io.BytesIO(study_instance(pixels, 12, f"DL-{seed}")))
    report = build_report(
        source, {"COVID-19": 0.1, "Lung Opacity": 0.1, "Normal": 0.7, "Viral Pneumonia": 0.1}, ["Normal"], MODEL
    )
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return str(report.SOPInstanceUID), buffer.getvalue()


def test_destination_parsing():
    assert Destination.parse("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    with pytest.raises(ValueError, match="AE@host:port"):
        Destination.parse("PACS:104")
    stow = StowDestination.parse("http://pacs:8042/dicom-web/")
    assert stow.url == "http://pacs:8042/dicom-web" and "/" not in stow.name
    for bad in ("pacs:8042", "ftp://pacs/dicom-web", "http://"):
        with pytest.raises(ValueError, match="--stow-to"):
            StowDestination.parse(bad)


@pytest.fixture
def orthanc(tmp_path):
    if not Path("/usr/sbin/Orthanc").exists():
        skip_or_fail_in_ci("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    server = OrthancServer(tmp_path / "orthanc", {}).start()
    yield server
    server.stop()


def in_orthanc(orthanc: OrthancServer, uid: str) -> bool:
    return [f["Type"] for f in httpx.post(f"{orthanc.url}/tools/lookup", content=uid).json()] == ["Instance"]


def test_stow_rs_delivery_into_a_real_pacs_reports_where_it_went(tmp_path, orthanc):
    destination = StowDestination.parse(f"{orthanc.url}/dicom-web")
    (outbox,) = outboxes(tmp_path / "spool", [destination], 10 * 1024**2).values()
    uid, data = report_file(3)
    outbox.put(uid, data).with_suffix(PREDICTION_SUFFIX).write_text("record-3")
    reports = []
    sender = make_sender("CXR_AI", destination, outbox, lambda *report: reports.append(report))
    assert sender.drain() == 1 and outbox.waiting() == [] and in_orthanc(orthanc, uid)
    assert reports == [("record-3", {"destination": destination.url, "status": "delivered", "attempts": 1,
                                     "report_uid": uid})]  # fmt: skip
    # Retrieved whole (preamble and file meta): what a viewer's WADO-RS request gets.
    (found,) = httpx.post(f"{orthanc.url}/tools/lookup", content=uid).json()
    retrieved = httpx.get(f"{orthanc.url}/instances/{found['ID']}/file").content
    assert pydicom.dcmread(io.BytesIO(retrieved)).Modality == "SR"


@pytest.mark.parametrize("kind", ["dimse", "stow"])
def test_a_pacs_down_when_the_report_is_due_gets_it_once_it_is_back(tmp_path, orthanc, kind):
    destination = (
        Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port)
        if kind == "dimse"
        else StowDestination.parse(f"{orthanc.url}/dicom-web")
    )
    (outbox,) = outboxes(tmp_path / "spool", [destination], 10 * 1024**2).values()
    uid, data = report_file(4)
    outbox.put(uid, data).with_suffix(PREDICTION_SUFFIX).write_text("record-4")
    reports = []
    sender = make_sender("CXR_AI", destination, outbox, lambda *report: reports.append(report))
    orthanc.stop()
    assert sender.drain() == 0 and sender.drain() == 0 and len(outbox.waiting()) == 1  # kept, retried
    orthanc.start()  # same ports, same storage
    assert sender.drain() == 1 and outbox.waiting() == [] and in_orthanc(orthanc, uid)
    assert [r[1]["status"] for r in reports] == ["retrying", "retrying", "delivered"]
    assert reports[-1][1]["attempts"] == 3 and "error" in reports[0][1]


def test_an_sr_is_stored_into_a_real_pacs_and_leaves_the_outbox(tmp_path):
    if not Path("/usr/sbin/Orthanc").exists():
        skip_or_fail_in_ci("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    orthanc = OrthancServer(tmp_path / "orthanc", {}).start()
    try:
        destination = Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port)
        (outbox,) = outboxes(tmp_path / "spool", [destination], 10 * 1024**2).values()
        uid, data = report_file(1)
        outbox.put(uid, data)
        assert make_sender("CXR_AI", destination, outbox).drain() == 1 and outbox.waiting() == []
        (found,) = httpx.post(f"{orthanc.url}/tools/lookup", content=uid).json()
        assert found["Type"] == "Instance"
    finally:
        orthanc.stop()


def test_an_unreachable_pacs_is_retried_then_listed_as_a_dead_letter(tmp_path):
    destination = Destination("NOBODY", "127.0.0.1", free_port())
    (outbox,) = outboxes(tmp_path / "spool", [destination], 10 * 1024**2).values()
    uid, data = report_file(2)
    outbox.put(uid, data)
    sender = make_sender("CXR_AI", destination, outbox, max_attempts=2)
    assert sender.drain() == 0 and len(outbox.waiting()) == 1  # first failure: kept for a retry
    assert sender.drain() == 0 and outbox.waiting() == []  # the last attempt: filed, not dropped
    (letter,) = dead_letters(tmp_path / "spool")
    assert letter["file"] == uid and letter["attempts"] == 2 and "association" in letter["error"]
    assert (outbox.refused / f"{uid}.dcm").read_bytes() == data
    status = subprocess.run(
        [str(Path(sys.executable).with_name("cxr")), "gateway", "status", "--spool", str(tmp_path / "spool")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(status.stdout)["dead_letters"][0]["file"] == uid
