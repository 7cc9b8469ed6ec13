"""Property-based fuzzing of the upload decoder: whatever the bytes, an image or a typed error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxr_model.preprocessing import ImageDecodeError, PreprocessSpec, open_image, preprocess
from tests.helpers import FUZZ_SEEDS as SEEDS

SPEC = PreprocessSpec(input_size=32, max_pixels=4_000_000)


def decode_or_typed_error(data: bytes) -> None:
    try:
        x = preprocess(data, SPEC)
    except ImageDecodeError as exc:
        assert exc.reason and str(exc)
        return
    assert tuple(x.shape) == (3, 32, 32) and bool(x.isfinite().all())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    decode_or_typed_error(data)


# pydicom warns when a flipped byte changes the VR encoding it guessed; that is the point here.
@pytest.mark.filterwarnings("ignore:Expected (im|ex)plicit VR:UserWarning")
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
    st.integers(0, 10_000),
)
def test_mutated_real_files(seed, flips, cut):
    """Valid PNG, JPEG and DICOM files with bytes flipped and the tail cut: corrupt uploads."""
    data = bytearray(seed)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    decode_or_typed_error(bytes(data[: max(1, len(data) - cut)]))


def test_the_seeds_themselves_decode():
    for seed in SEEDS:
        assert open_image(seed, SPEC.max_pixels).size[0] > 0
