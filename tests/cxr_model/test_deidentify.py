"""The stored copy of a DICOM upload: PS3.15 Basic Profile with Patient ID and UIDs retained."""

from __future__ import annotations

import io

import numpy as np
import pydicom

from cxr_model.deidentify import METHOD, deidentify
from cxr_model.dicom import decode
from tests.helpers import make_dicom

IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19610412",
    "PatientAddress": "12 Harbour Road, Leith",
    "InstitutionName": "St Elsewhere Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "OperatorsName": "Tech^Tina",
    "AccessionNumber": "ACC-99817",
    "StationName": "DX-ROOM-4",
    "DeviceSerialNumber": "SN-4711",
    "OtherPatientIDs": "NHS-943-476-5919",
}


def identified_radiograph() -> bytes:
    ds = pydicom.dcmread(
        io.BytesIO(
            make_dicom(
                np.full((24, 24), 1000, np.uint16),
                bits_stored=12,
                patient_id="P-DEID-1",
                preamble=b"MZ" + b"\x90" * 126,
            )
        )
    )
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    ds.add_new(0x00091010, "LO", "private vendor note: Jane Doe")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_stored_copy_keeps_the_image_the_patient_id_and_the_uids_and_nothing_identifying():
    data = identified_radiograph()
    stored = deidentify(data)
    for value in [*IDENTIFYING.values(), "Jane Doe"]:
        assert value.encode() not in stored, value
    assert stored[:128] == bytes(128)  # the free-form preamble can carry another file format
    before, after = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(stored))
    assert after.PatientID == "P-DEID-1" and after.SOPInstanceUID == before.SOPInstanceUID
    assert after.PatientName == "" and "PatientName" in after  # Type 2: present, empty
    assert after.PatientIdentityRemoved == "NO" and after.DeidentificationMethod == METHOD
    assert np.array_equal(np.asarray(decode(stored, 10**6)[0]), np.asarray(decode(data, 10**6)[0]))


def test_other_formats_are_stored_as_they_are():
    assert deidentify(b"\x89PNG\r\n\x1a\n....") == b"\x89PNG\r\n\x1a\n...."
