import numpy as np
import pytest

from serve.inputs import InputError, decode_upload, validate_patient_id, validate_request_id
from tests.conftest import png_bytes


@pytest.mark.parametrize("value", ["P-0001", "12345", "mrn.778_2", "a" * 64])
def test_valid_patient_ids(value):
    assert validate_patient_id(f" {value} ") == value


@pytest.mark.parametrize("value, code", [
    ("", "missing_patient_id"), (None, "missing_patient_id"), ({"$ne": None}, "missing_patient_id"),
    ("$ne", "bad_patient_id"), ("a" * 65, "bad_patient_id"), ("<b>x</b>", "bad_patient_id"),
    ("../etc", "bad_patient_id"), ("P 1", "bad_patient_id"),
])
def test_invalid_patient_ids(value, code):
    with pytest.raises(InputError) as error:
        validate_patient_id(value)
    assert error.value.code == code and error.value.status == 400 and error.value.field == "patient_id"


def test_request_ids():
    assert validate_request_id("") is None
    assert validate_request_id("req-12345678") == "req-12345678"
    with pytest.raises(InputError):
        validate_request_id("short")


def test_decode_errors_map_to_statuses():
    big = png_bytes(np.zeros((20, 20), np.uint8))
    noisy = png_bytes(np.random.default_rng(0).integers(0, 256, (9, 9), dtype=np.uint8))
    # The pixel budget is checked from the header, before any pixel is decoded.
    cases = {b"": 400, b"text": 415, big: 413, big[:60]: 413, noisy[: len(noisy) - 30]: 422}
    for data, status in cases.items():
        with pytest.raises(InputError) as error:
            decode_upload(data, max_pixels=100)
        assert error.value.status == status and error.value.field == "image"
    assert decode_upload(png_bytes(np.zeros((5, 5), np.uint8)), max_pixels=100).size == (5, 5)
