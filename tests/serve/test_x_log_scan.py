"""After the serving tests (this module runs last in the package, by name): scan every log file
the Ray session wrote for the patient IDs and DICOM names the suite sent."""

from __future__ import annotations

from pathlib import Path

from serve.access import pseudonym
from tests.serve.conftest import PSEUDONYM_KEY


def session_logs() -> list[Path]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return [path for path in logs.rglob("*") if path.is_file()]


def test_no_log_holds_a_raw_patient_id_or_dicom_name(service, db):
    # Every patient ID the service stored or searched for, plus the DICOM fixtures' patient name.
    patients = set(db["predictions"].distinct("patient_id")) | set(db["audit"].distinct("patient_id"))
    patients.discard(None)
    assert len(patients) >= 20  # the suite really sent patients through the service
    needles = {p for p in patients if len(p) >= 5} | {"Doe^Jane", "Doe^John"}
    files = session_logs()
    assert any("replica_cxr_ResultStore" in f.name for f in files)
    text = "\n".join(f.read_text(errors="replace") for f in files)
    found = sorted(n for n in needles if n in text)
    assert not found, f"raw identifiers in the logs: {found[:10]}"
    # The positive control: the store does log its events, by pseudonym.
    saved = db["predictions"].find_one({}, sort=[("created_at", 1)])["patient_id"]
    assert pseudonym(saved, PSEUDONYM_KEY) in text
