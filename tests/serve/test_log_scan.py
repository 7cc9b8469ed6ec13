"""No log the Ray session writes holds a raw patient ID or DICOM patient name.

Order-independent: the test first sends its own patients down every path (refused, predicted but
not saved, saved, viewed, exported, searched, DICOM with the ID only in its header, the page form),
then scans every log file for those and for every patient ID the suite has sent so far (noted by
the suite's HTTP clients, ``helpers.SENT_PATIENT_IDS``) or stored.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from serve.audit import pseudonym
from tests.helpers import make_dicom
from tests.serve.conftest import PSEUDONYM_KEY
from tests.serve.helpers import SENT_PATIENT_IDS, chest_png, post_prediction
from training.synthetic import render_chest

MIN_NEEDLE = 5  # shorter IDs ("P-1") could match unrelated log text by chance


def session_logs() -> list[Path]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return [path for path in logs.rglob("*") if path.is_file()]


def logs_text() -> str:
    return "\n".join(f.read_text(errors="replace") for f in session_logs())


def send_every_kind_of_request(service, tag: str) -> str:
    """One patient per path through the service; returns the saved one's ID."""
    assert service.predict(b"not an image", patient_id=f"LOG-REFUSED-{tag}").status_code == 415
    assert service.predict(chest_png(801), patient_id=f"LOG-UNSAVED-{tag}").status_code == 200
    saved_patient = f"LOG-SAVED-{tag}"
    body = service.predict(chest_png(802), patient_id=saved_patient, save="1").json()
    assert body["saved"] is True
    assert service.http.get(f"/api/v1/predictions/{body['prediction_id']}").status_code == 200
    assert service.http.get(f"/api/v1/predictions/{body['prediction_id']}/image").status_code == 200
    assert service.http.get(f"/api/v1/patients/{saved_patient}/predictions").status_code == 200
    assert service.http.get("/patients", params={"patient_id": saved_patient}).status_code == 200
    pixels = (render_chest("Normal", np.random.default_rng(803)) * 4095).astype(np.uint16)
    dicom = make_dicom(pixels, bits_stored=12, patient_id=f"LOG-DICOM-{tag}")
    response = service.http.post(
        "/api/v1/predictions", data={"save": "1"}, files={"image": ("x.dcm", dicom, "application/dicom")}
    )
    assert response.status_code == 200 and response.json()["patient_id"] == f"LOG-DICOM-{tag}"
    assert post_prediction(service, chest_png(804), patient_id=f"LOG-PAGE-{tag}").status_code == 200
    return saved_patient


def test_no_log_holds_a_raw_patient_id_or_dicom_name(service, db):
    tag = uuid.uuid4().hex[:8]
    saved_patient = send_every_kind_of_request(service, tag)
    assert {f"LOG-REFUSED-{tag}", f"LOG-DICOM-{tag}", f"LOG-PAGE-{tag}"} <= SENT_PATIENT_IDS
    # The positive control: the store logs its events, by pseudonym. Waiting for it also lets the
    # replicas' log files catch up with everything sent above.
    marker, deadline, text = pseudonym(saved_patient, PSEUDONYM_KEY), time.monotonic() + 60, ""
    while time.monotonic() < deadline and marker not in text:
        time.sleep(1)
        text = logs_text()
    assert marker in text
    assert any("replica_cxr_ResultStore" in f.name for f in session_logs())
    stored = set(db["predictions"].distinct("patient_id")) | set(db["audit"].distinct("patient_id"))
    patients = (SENT_PATIENT_IDS | stored) - {None}
    needles = {p for p in patients if len(p) >= MIN_NEEDLE} | {"Doe^Jane", "Doe^John"}
    found = sorted(n for n in needles if n in text)
    assert not found, f"raw identifiers in the logs: {found[:10]}"
