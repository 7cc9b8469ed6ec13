import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxr_model.preprocessing import trailing_bytes
from serve.errors import InputError
from serve.inputs import decode_upload, validate_patient_id, validate_request_id
from tests.helpers import FUZZ_SEEDS as SEEDS
from tests.helpers import png_bytes


@pytest.mark.parametrize("value", ["P-0001", "12345", "mrn.778_2", "a" * 64])
def test_valid_patient_ids(value):
    assert validate_patient_id(f" {value} ") == value


@pytest.mark.parametrize(
    "value, code",
    [
        ("", "missing_patient_id"),
        (None, "missing_patient_id"),
        ({"$ne": None}, "missing_patient_id"),
        ("$ne", "bad_patient_id"),
        ("a" * 65, "bad_patient_id"),
        ("<b>x</b>", "bad_patient_id"),
        ("../etc", "bad_patient_id"),
        ("P 1", "bad_patient_id"),
    ],
)
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


@pytest.mark.filterwarnings("ignore:Expected (im|ex)plicit VR:UserWarning")  # a flipped byte in a DICOM seed
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 10_000),
    st.binary(max_size=256),
)
def test_upload_decoding_gives_an_image_or_a_4xx(seed, flips, cut, tail):
    """The service's decoder on corrupted, truncated and appended-to files: only typed 4xx errors."""
    data = bytearray(seed)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    data = bytes(data[: max(1, len(data) - cut)]) + tail
    try:
        image = decode_upload(data, 4_000_000)
    except InputError as exc:
        assert 400 <= exc.status < 500 and exc.code and str(exc)
        return
    assert image.size[0] > 0 and trailing_bytes(data) == 0
