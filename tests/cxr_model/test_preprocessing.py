import io

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_model.formats import ImageDecodeError, sniff_format, trailing_bytes
from cxr_model.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessSpec,
    decode_grayscale,
    open_image,
    preprocess,
)
from tests.helpers import png_bytes

SPEC = PreprocessSpec(input_size=32)


def expected_for_gray(level: float) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (torch.full((1, 32, 32), level) - mean) / std


def test_uniform_8bit_image_normalises_per_channel():
    out = preprocess(png_bytes(np.full((50, 70), 128, np.uint8)), SPEC)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected_for_gray(128 / 255), atol=1e-6, rtol=0)


def test_16bit_png_uses_full_range():
    data = png_bytes(np.full((40, 40), 32768, np.uint16))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    torch.testing.assert_close(preprocess(data, SPEC), expected_for_gray(32768 / 65535), atol=1e-5, rtol=0)


def test_rgb_grey_and_l_give_the_same_input():
    pixels = np.random.default_rng(0).integers(0, 256, (60, 60), dtype=np.uint8)
    assert torch.equal(preprocess(png_bytes(pixels), SPEC), preprocess(png_bytes(pixels, "RGB"), SPEC))


def test_jpeg_is_decoded():
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(buffer, format="JPEG", quality=95)
    out = decode_grayscale(buffer.getvalue(), SPEC)
    assert out.shape == (1, 32, 32)
    assert abs(float(out.mean()) - 200 / 255) < 0.01


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, not an image at all", "not_an_image"),
        (b"GIF89a" + b"\0" * 100, "not_an_image"),
    ],
)
def test_unusable_bytes_raise_typed_errors(data, reason):
    with pytest.raises(ImageDecodeError) as error:
        preprocess(data, SPEC)
    assert error.value.reason == reason


def test_truncated_png_is_rejected():
    data = png_bytes(np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8))
    with pytest.raises(ImageDecodeError) as error:
        preprocess(data[: len(data) // 2], SPEC)
    assert error.value.reason == "truncated"


def test_pixel_budget_is_enforced_before_decoding():
    data = png_bytes(np.zeros((40, 40), np.uint8))
    with pytest.raises(ImageDecodeError) as error:
        preprocess(data, PreprocessSpec(input_size=32, max_pixels=1000))
    assert error.value.reason == "too_many_pixels"


def test_format_comes_from_magic_bytes():
    assert sniff_format(png_bytes(np.zeros((4, 4), np.uint8))) == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert sniff_format(b"<svg></svg>") is None


def test_decompression_bomb_warnings_are_errors_even_under_a_generous_pixel_limit():
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    # 10000 x 10000: above Pillow's MAX_IMAGE_PIXELS (warning band), below twice it (no Pillow error).
    ihdr = (10000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    bomb = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageDecodeError) as caught:
        open_image(bomb, max_pixels=10**9)
    assert caught.value.reason == "too_many_pixels"


def _jpeg(**options) -> bytes:
    """Noise, so the entropy-coded data holds stuffed FF00 bytes (and RSTn markers when asked)."""
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def _with_exif_thumbnail(jpeg: bytes) -> bytes:
    """An APP1 segment holding a whole small JPEG, whose own EOI comes before the image's."""
    thumbnail = _jpeg()[:600] + b"\xff\xd9"
    app1 = b"Exif\0\0" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + jpeg[2:]


JPEGS = {
    "baseline": _jpeg(),
    "progressive (several scans)": _jpeg(progressive=True),
    "restart markers": _jpeg(restart_marker_blocks=1),
    "EXIF thumbnail": _with_exif_thumbnail(_jpeg()),
}


@pytest.mark.parametrize("name", JPEGS)
def test_jpeg_trailing_data_is_found_by_walking_the_segments(name):
    jpeg = JPEGS[name]
    assert Image.open(io.BytesIO(jpeg)).size == (64, 64)
    assert trailing_bytes(jpeg) == 0 and trailing_bytes(jpeg + b"\0" * 32) == 0
    # A payload that ends in an EOI of its own used to pass a last-marker check.
    payload = b"<script>alert(1)</script>\xff\xd9"
    assert trailing_bytes(jpeg + payload) == len(payload)
    assert trailing_bytes(jpeg[: len(jpeg) // 2]) == 0  # truncation is decoding's to report


def test_png_trailing_data_ignores_a_forged_end_chunk_and_zero_padding():
    png = png_bytes(np.zeros((8, 8), np.uint8))
    forged_end = b"<html></html>" + (0).to_bytes(4, "big") + b"IEND" + b"\xaeB`\x82"
    assert trailing_bytes(png) == 0 and trailing_bytes(png + b"\0" * 8) == 0
    assert trailing_bytes(png + forged_end) == len(forged_end)
    assert trailing_bytes(png[:-6]) == 0


def test_format_names_stay_importable_from_preprocessing():
    # Serving imports them from preprocessing; they live in formats so that dicom can share them.
    from cxr_model import dicom, formats, preprocessing

    for name in ("ImageDecodeError", "sniff_format", "trailing_bytes"):
        assert getattr(preprocessing, name) is getattr(formats, name)
    assert issubclass(dicom.DicomError, preprocessing.ImageDecodeError)
