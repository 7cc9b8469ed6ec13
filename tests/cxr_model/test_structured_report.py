"""The AI result as a DICOM Comprehensive SR (TID 1500): valid per dciodvfy, and saying what it should."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from cxr_model.secondary_capture import build_capture
from cxr_model.structured_report import SCHEME, build_report
from tests.helpers import skip_or_fail_in_ci, study_instance
from training.synthetic import render_chest

PROBABILITIES = {"COVID-19": 0.71, "Lung Opacity": 0.12, "Normal": 0.123456789, "Viral Pneumonia": 0.046543211}
MODEL = {"name": "cxr-densenet161", "version": "2026.11.29", "weights_sha256": "ab" * 32}
ANSWER = {"top_label": "COVID-19", "confidence": 0.71, "model": MODEL}


@pytest.fixture
def source() -> pydicom.Dataset:
    """A DX instance with what a modality sends: study, series, accession, pixel spacing."""
    pixels = (render_chest("COVID-19", np.random.default_rng(0)) * 4095).astype(np.uint16)
    return pydicom.dcmread(io.BytesIO(study_instance(pixels, 12, "SR-1")))


def groups(report) -> dict[str, list]:
    measurements = next(
        i for i in report.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements"
    )
    out = {}
    for group in measurements.ContentSequence:
        identifier = next(
            i.TextValue
            for i in group.ContentSequence
            if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"
        )
        out[identifier] = list(group.ContentSequence)
    return out


def test_the_report_references_its_image_names_the_algorithm_and_is_unverified(source):
    report = build_report(source, PROBABILITIES, ["COVID-19"], MODEL)
    assert report.StudyInstanceUID == source.StudyInstanceUID and report.PatientID == "SR-1"
    assert report.SeriesInstanceUID != source.SeriesInstanceUID and report.Modality == "SR"
    assert report.VerificationFlag == "UNVERIFIED" and report.CompletionFlag == "COMPLETE"
    assert "not for diagnostic use" in report.SeriesDescription
    assert report.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == SCHEME
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    by_label = groups(report)
    assert set(by_label) == set(PROBABILITIES)
    for label, items in by_label.items():
        (probability,) = [i for i in items if i.ValueType == "NUM"]
        assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(PROBABILITIES[label], abs=1e-6)
        present = [i for i in items if i.ValueType == "CODE" and i.ConceptCodeSequence[0].CodeValue == "52101004"]
        assert bool(present) == (label == "COVID-19")  # only the called label is asserted present
        texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in items if i.ValueType == "TEXT"}
        assert texts["Algorithm Name"] == MODEL["name"] and texts["Algorithm Version"] == MODEL["version"]
        assert MODEL["weights_sha256"] in texts["Algorithm Parameters"]
        (image,) = [i for i in items if i.ValueType == "IMAGE"]
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_dciodvfy_finds_no_error(source, tmp_path):
    if not shutil.which("dciodvfy"):
        skip_or_fail_in_ci("dicom3tools is not installed (apt-get install dicom3tools)")
    path = tmp_path / "sr.dcm"
    build_report(source, PROBABILITIES, ["COVID-19", "Lung Opacity"], MODEL).save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    assert "ComprehensiveSR" in lines[0]
    assert [line for line in lines if line.startswith("Error")] == []


def test_the_same_result_is_the_same_dicom_object_and_another_model_s_is_another(source):
    """A result sent twice (a resend, or both the gateway and a STOW-RS claim) must not be two
    reports in the PACS: its UIDs follow from the source instance and the weights."""
    first, again = (build_report(source, PROBABILITIES, ["COVID-19"], MODEL) for _ in range(2))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID != first.SeriesInstanceUID != source.SeriesInstanceUID
    retrained = build_report(source, PROBABILITIES, ["COVID-19"], MODEL | {"weights_sha256": "cd" * 32})
    assert retrained.SOPInstanceUID != first.SOPInstanceUID
    other = source.copy()
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    assert build_report(other, PROBABILITIES, ["COVID-19"], MODEL).SOPInstanceUID != first.SOPInstanceUID
    capture, capture_again = (build_capture(source_bytes_of(source), ANSWER, 50_000_000) for _ in range(2))
    assert capture.SOPInstanceUID == capture_again.SOPInstanceUID != first.SOPInstanceUID


def source_bytes_of(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
