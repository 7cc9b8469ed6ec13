import io

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_model.preprocessing import (
    IMAGENET_MEAN, IMAGENET_STD, ImageDecodeError, PreprocessSpec, decode_grayscale, open_image, preprocess,
    sniff_format,
)
from tests.conftest import png_bytes

SPEC = PreprocessSpec(input_size=32)


def expected_for_gray(level: float) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((torch.full((1, 32, 32), level) - mean) / std)


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


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"hello, not an image at all", "not_an_image"),
    (b"GIF89a" + b"\0" * 100, "not_an_image"),
])
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
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError) as caught:
        open_image(bomb, max_pixels=10**9)
    assert caught.value.reason == "too_many_pixels"
