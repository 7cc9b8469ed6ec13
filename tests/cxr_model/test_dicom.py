"""DICOM radiographs from small generated files of each kind (pydicom writes them)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr_model.dicom import decode, is_dicom, read_header
from cxr_model.formats import ImageDecodeError, sniff_format
from cxr_model.preprocessing import PreprocessSpec, open_image, preprocess
from tests.helpers import j2k_codestream, make_dicom

MAX = 50_000_000


def ramp(bits: int, shape=(48, 64)) -> np.ndarray:
    """Left-to-right ramp over the whole stored range, so orientation and contrast are checkable."""
    top = 2**bits - 1
    row = np.linspace(0, top, shape[1]).round()
    return np.tile(row, (shape[0], 1)).astype(np.uint8 if bits <= 8 else np.uint16)


def left_right(image) -> tuple[float, float]:
    arr = np.asarray(image, dtype=np.float64)
    return arr[:, 0].mean(), arr[:, -1].mean()


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_monochrome2_at_each_bit_depth_keeps_bright_where_values_are_high(bits):
    image, header = decode(make_dicom(ramp(bits), bits_stored=bits), MAX)
    assert image.mode in ("I;16", "I;16L", "I;16N") and image.size == (64, 48)
    left, right = left_right(image)
    assert left == 0 and right == 65535
    assert header.bits_stored == bits and header.photometric == "MONOCHROME2"


def test_monochrome1_is_inverted():
    plain, _ = decode(make_dicom(ramp(12), bits_stored=12), MAX)
    inverted, _ = decode(make_dicom(ramp(12), bits_stored=12, photometric="MONOCHROME1"), MAX)
    assert np.array_equal(np.asarray(plain, np.int64) + np.asarray(inverted, np.int64), np.full((48, 64), 65535))


def test_rescale_slope_and_intercept_are_applied():
    flipped, _ = decode(make_dicom(ramp(12), bits_stored=12, slope=-1.0, intercept=4095.0), MAX)
    left, right = left_right(flipped)
    assert left == 65535 and right == 0  # a negative slope turns the ramp round


def test_a_narrow_window_saturates_outside_it():
    wide, _ = decode(make_dicom(ramp(12), bits_stored=12), MAX)
    narrow, _ = decode(make_dicom(ramp(12), bits_stored=12, window=(2048, 512)), MAX)
    saturated = lambda im: np.isin(np.asarray(im), (0, 65535)).mean()  # noqa: E731
    assert saturated(narrow) > 0.6 > saturated(wide)


def test_rle_compressed_decodes_like_uncompressed():
    plain, _ = decode(make_dicom(ramp(16), bits_stored=16), MAX)
    rle, header = decode(make_dicom(ramp(16), bits_stored=16, rle=True), MAX)
    assert header.transfer_syntax == "1.2.840.10008.1.2.5"
    assert np.array_equal(np.asarray(plain), np.asarray(rle))


def test_type_comes_from_magic_bytes_whatever_the_preamble():
    data = make_dicom(ramp(8), bits_stored=8, preamble=b"MZ" + b"\x90" * 126)
    assert sniff_format(data) == "dicom" and is_dicom(data)
    # The whole serving/training path takes DICOM like PNG.
    x = preprocess(data, PreprocessSpec(input_size=32))
    assert x.shape == (3, 32, 32) and torch_finite(x)


def torch_finite(x) -> bool:
    return bool(x.isfinite().all())


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"with_pixels": False}, "dicom_no_pixels"),
        ({"modality": "CT"}, "dicom_modality"),
        ({"body_part": "KNEE"}, "dicom_not_chest"),
        ({"view_position": "LL"}, "dicom_not_frontal"),
        ({"view_position": "LATERAL"}, "dicom_not_frontal"),
        ({"syntax": "1.2.840.10008.1.2.4.100"}, "dicom_unsupported_syntax"),  # MPEG2: no decoder
        ({"declared_shape": (60_000, 60_000)}, "too_many_pixels"),
        ({"photometric": "RGB"}, "dicom_not_greyscale"),
    ],
)
def test_header_problems_are_refused_before_any_pixel_is_decoded(change, reason):
    data = make_dicom(ramp(12), bits_stored=12, **change)
    with pytest.raises(ImageDecodeError) as caught:
        open_image(data, MAX)
    assert caught.value.reason == reason
    if reason != "dicom_no_pixels":
        from cxr_model.dicom import DicomError

        with pytest.raises(DicomError):
            read_header(data, MAX)


def test_missing_body_part_is_accepted_and_truncated_pixels_are_refused():
    data = make_dicom(ramp(12), bits_stored=12, body_part=None)
    assert read_header(data, MAX).body_part is None and open_image(data, MAX).size == (64, 48)
    with pytest.raises(ImageDecodeError) as caught:
        open_image(data[:-2000], MAX)
    assert caught.value.reason in ("truncated", "not_an_image")


def test_header_patient_id_is_read():
    assert read_header(make_dicom(ramp(8), bits_stored=8, patient_id="DCM-4711"), MAX).patient_id == "DCM-4711"


def test_a_corrupt_header_element_is_a_typed_error_that_names_no_values():
    # Found by the fuzzer: one zeroed byte turns the transfer syntax element's VR into garbage,
    # which pydicom only notices when the element is first read.
    data = bytearray(make_dicom(ramp(12), bits_stored=12, patient_id="DCM-SECRET-7"))
    data[271] = 0
    with pytest.raises(ImageDecodeError) as caught:
        open_image(bytes(data), MAX)
    assert caught.value.reason == "not_an_image" and "DCM-SECRET-7" not in str(caught.value)


JPEG2000_LOSSLESS, JPEG_BASELINE = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50"


def _jpeg(pixels: np.ndarray, claimed: tuple[int, int] | None = None) -> bytes:
    import io
    import struct

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    stream = bytearray(buffer.getvalue())
    if claimed is not None:
        at = stream.find(b"\xff\xc0")
        stream[at + 5 : at + 9] = struct.pack(">HH", claimed[1], claimed[0])
    return bytes(stream)


def test_a_real_jpeg2000_radiograph_decodes_at_its_declared_size():
    pixels = (ramp(12) * 1).astype(np.uint16)
    data = make_dicom(pixels, bits_stored=12, syntax=JPEG2000_LOSSLESS, encoded=j2k_codestream(pixels))
    assert open_image(data, MAX).size == (64, 48)


@pytest.mark.parametrize("syntax, codestream", [(JPEG2000_LOSSLESS, j2k_codestream), (JPEG_BASELINE, _jpeg)])
def test_a_codestream_declaring_more_pixels_than_its_header_is_refused_before_decoding(syntax, codestream):
    # The header says 512x512; the codestream, which the decoder believes, says 40000x40000.
    pixels = np.zeros((512, 512), np.uint16 if syntax == JPEG2000_LOSSLESS else np.uint8)
    bits = 12 if syntax == JPEG2000_LOSSLESS else 8
    data = make_dicom(pixels, bits_stored=bits, syntax=syntax, encoded=codestream(pixels, claimed=(40000, 40000)))
    with pytest.raises(ImageDecodeError) as caught:
        open_image(data, MAX)
    assert caught.value.reason == "too_many_pixels" and "40000x40000" in str(caught.value)


def test_a_codestream_of_another_size_than_its_header_is_refused():
    pixels = np.zeros((512, 512), np.uint16)
    data = make_dicom(
        pixels, bits_stored=12, syntax=JPEG2000_LOSSLESS, encoded=j2k_codestream(pixels, claimed=(256, 256))
    )
    with pytest.raises(ImageDecodeError) as caught:
        open_image(data, MAX)
    assert caught.value.reason == "dicom_inconsistent"


@pytest.mark.parametrize("view", ["PA", "AP", "pa", None])
def test_frontal_or_unstated_views_are_read(view):
    image, header = decode(make_dicom(ramp(12), bits_stored=12, view_position=view), MAX)
    assert header.modality == "DX" and image.size == (ramp(12).shape[1], ramp(12).shape[0])


def test_identifiers_are_read_whatever_else_is_wrong_and_never_invented():
    from cxr_model.dicom import read_identifiers
    from tests.helpers import study_instance

    data = study_instance(ramp(12), 12, "ID-0001")
    ds = pydicom.dcmread(io.BytesIO(data))
    ids = read_identifiers(data)
    assert ids.to_dict() == {
        "study_instance_uid": ds.StudyInstanceUID,
        "series_instance_uid": ds.SeriesInstanceUID,
        "sop_instance_uid": ds.SOPInstanceUID,
        "sop_class_uid": ds.SOPClassUID,
        "accession_number": "ACC-ID-0001",
        "modality": "DX",
        "body_part_examined": "CHEST",
        "view_position": "PA",
    }
    knee = read_identifiers(make_dicom(ramp(12), bits_stored=12, body_part="KNEE"))  # refused, still identified
    assert knee.body_part_examined == "KNEE" and knee.sop_instance_uid and knee.accession_number is None
    ds.AccessionNumber = "A" * 80  # longer than any SH value: not DICOM, not stored
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert read_identifiers(buffer.getvalue()).accession_number is None
    assert read_identifiers(b"\x89PNG\r\n\x1a\n" + bytes(100)) is None
    corrupt = read_identifiers(bytes(128) + b"DICM" + b"\xff" * 50)
    assert corrupt is None or corrupt.to_dict() == {}


def test_the_sending_ae_title_is_read_from_the_file_meta_and_an_impossible_one_dropped():
    """The gateway writes the calling AE into the File Meta Information; read back, never invented."""
    from cxr_model.dicom import read_identifiers

    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((32, 32), np.uint16), 12)))
    assert read_identifiers(make_dicom(np.zeros((32, 32), np.uint16), 12)).sending_application_entity_title is None
    for title, expected in (("WARD3_DX", "WARD3_DX"), ("X" * 17, None)):
        ds.file_meta.SendingApplicationEntityTitle = title
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert read_identifiers(buffer.getvalue()).sending_application_entity_title == expected
