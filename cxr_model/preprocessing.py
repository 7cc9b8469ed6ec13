"""The one preprocessing path shared by training, evaluation and serving.

``decode_grayscale`` turns encoded bytes (PNG/JPEG; mode L, RGB, 16-bit) into a
single-channel float tensor in [0, 1] at the model's input size, and
``normalize`` makes the 3-channel, mean/std-normalised model input. Training
inserts augmentation between the two; nothing else differs between paths.
Bump ``PREPROCESSING_VERSION`` whenever the output for a given input changes:
it is recorded in every model card and every stored prediction.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from cxr_model.dicom import decode as decode_dicom

# ImageDecodeError, sniff_format and trailing_bytes live in formats (which dicom imports too); they
# stay importable from here, where serving and training have always found them.
from cxr_model.formats import MAX_PIXELS, ImageDecodeError, sniff_format, trailing_bytes  # noqa: F401

PREPROCESSING_VERSION = "cxr-pre-2"  # 2: MONOCHROME1 DICOM inverted before scaling (bit-exact with MONOCHROME2)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    version: str = PREPROCESSING_VERSION
    # Refuse images larger than this before their pixels are decoded.
    max_pixels: int = MAX_PIXELS

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return cls(
            input_size=int(data["input_size"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            version=str(data.get("version", PREPROCESSING_VERSION)),
            max_pixels=int(data.get("max_pixels", cls.max_pixels)),
        )


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open and fully decode an image, raising ``ImageDecodeError`` for anything unusable."""
    if not data:
        raise ImageDecodeError("empty", "the file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError("not_an_image", "not a PNG, JPEG or DICOM image")
    if fmt == "dicom":  # DicomError is an ImageDecodeError: callers catch one type
        return decode_dicom(data, max_pixels)[0]
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a bomb is an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt.upper()])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_many_pixels", str(exc)) from exc
    except Exception as exc:
        raise ImageDecodeError("not_an_image", f"cannot read the {fmt.upper()} header: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError("not_an_image", "the image has no pixels")
    if width * height > max_pixels:
        raise ImageDecodeError("too_many_pixels", f"{width}x{height} exceeds the limit of {max_pixels} pixels")
    try:
        image.load()
    except Exception as exc:
        raise ImageDecodeError("truncated", f"the image data is truncated or corrupt: {exc}") from exc
    if image.format == "JPEG":
        image = ImageOps.exif_transpose(image)  # phones and some scanners store rotation in EXIF
    return image


def open_export(data: bytes, max_pixels: int) -> Image.Image:
    """``open_image`` for a file as a clinical system exported it: bytes after the end of the image
    (a polyglot, or damage) are refused as ``trailing_data``. Serving and archive scoring use this."""
    image = open_image(data, max_pixels)
    extra = trailing_bytes(data)
    if extra:
        kind = sniff_format(data).upper()
        raise ImageDecodeError(
            "trailing_data", f"{extra} bytes follow the end of the {kind} image; upload the image exactly as exported"
        )
    return image


def resize_levels(image: Image.Image, size: int) -> np.ndarray:
    """Resize to size x size in the image's own grey levels: uint8 for 8-bit sources, float32 in
    [0, 1] for 16-bit ones.

    Resizing happens in PIL on the native bit depth, which is several times cheaper than converting
    the full-resolution image to float first. Keeping 8-bit levels as uint8 also makes the array a
    quarter of the size where it crosses a process boundary (serving's ingress -> classifier).
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(image, dtype=np.float32) / 65535.0
        gray = Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR)
        return np.clip(np.asarray(gray, dtype=np.float32), 0.0, 1.0)
    if image.mode not in ("L", "RGB"):
        # Palette, alpha and CMYK images: flatten onto their own colour model first.
        image = image.convert("RGB")
    if image.mode == "RGB":
        image = image.convert("L")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def levels_to_unit(levels: np.ndarray) -> np.ndarray:
    """``resize_levels`` output (any leading shape) -> float32 grey levels in [0, 1]."""
    if levels.dtype == np.uint8:
        return levels.astype(np.float32) / np.float32(255.0)
    return levels.astype(np.float32, copy=False)


def image_to_grayscale(image: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """A decoded image (from ``open_image``) -> float tensor [1, S, S] in [0, 1]."""
    return torch.from_numpy(levels_to_unit(resize_levels(image, spec.input_size))).unsqueeze(0)


def decode_grayscale(data: bytes, spec: PreprocessSpec) -> torch.Tensor:
    """Encoded bytes -> float tensor [1, S, S] in [0, 1]."""
    return image_to_grayscale(open_image(data, spec.max_pixels), spec)


def display_image(image: Image.Image) -> Image.Image:
    """8-bit L or RGB for drawing on; 16-bit radiographs are scaled, not clipped."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray((np.asarray(image, dtype=np.float32) / 257.0).round().clip(0, 255).astype(np.uint8))
    return image if image.mode in ("L", "RGB") else image.convert("RGB")


def normalize(gray: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """[1, S, S] (or [N, 1, S, S]) grey levels -> 3-channel normalised model input."""
    mean = torch.tensor(spec.mean, dtype=gray.dtype).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=gray.dtype).view(3, 1, 1)
    return (gray - mean) / std


def preprocess(data: bytes, spec: PreprocessSpec) -> torch.Tensor:
    """Encoded bytes -> model input [3, S, S]. The path evaluation and serving use."""
    return normalize(decode_grayscale(data, spec), spec)
