"""The annotated Secondary Capture: valid per dciodvfy, in the source's study, the finding burnt in."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from cxr_model.dicom import decode
from cxr_model.secondary_capture import SERIES_DESCRIPTION, build_capture
from tests.helpers import skip_or_fail_in_ci, study_instance
from training.synthetic import render_chest

MODEL = {"name": "m", "version": "1", "weights_sha256": "cd" * 32, "synthetic_demo": False}
ANSWER = {"top_label": "COVID-19", "confidence": 0.71, "model": MODEL}
MAX_PIXELS = 50_000_000


@pytest.fixture
def source_bytes() -> bytes:
    pixels = (render_chest("COVID-19", np.random.default_rng(0)) * 4095).astype(np.uint16)
    return study_instance(pixels, 12, "SC-1")


def test_the_capture_is_the_annotated_source_in_its_study(source_bytes):
    source = pydicom.dcmread(io.BytesIO(source_bytes))
    capture = build_capture(source_bytes, ANSWER, MAX_PIXELS)
    assert capture.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert capture.StudyInstanceUID == source.StudyInstanceUID and capture.PatientID == "SC-1"
    assert capture.AccessionNumber == source.AccessionNumber
    assert capture.SeriesInstanceUID != source.SeriesInstanceUID and capture.SeriesDescription == SERIES_DESCRIPTION
    assert capture.BurnedInAnnotation == "YES" and capture.PhotometricInterpretation == "RGB"
    pixels = capture.pixel_array
    assert pixels.shape == (source.Rows, source.Columns, 3)
    # Below the banner it is the radiograph itself; the banner (top rows) carries the text.
    plain = np.asarray(decode(source_bytes, MAX_PIXELS)[0], dtype=np.float64) / 257.0
    bottom = slice(source.Rows // 2, None)
    assert np.abs(pixels[bottom, :, 0] - plain[bottom]).max() <= 1.0
    assert np.abs(pixels[:20, :, 0] - plain[:20]).mean() > 5  # darkened banner and white letters


def test_dciodvfy_finds_no_error_in_the_capture(source_bytes, tmp_path):
    if not shutil.which("dciodvfy"):
        skip_or_fail_in_ci("dicom3tools is not installed (apt-get install dicom3tools)")
    path = tmp_path / "sc.dcm"
    build_capture(source_bytes, ANSWER, MAX_PIXELS).save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    assert "SCImage" in lines[0]
    assert [line for line in lines if line.startswith("Error")] == []
