"""The pictures a prediction yields: the annotated radiograph, the Grad-CAM overlay, display and
thumbnail sizes, and stored images as HTTP responses."""

from __future__ import annotations

import io

from PIL import Image
from starlette.responses import Response

from cxr_model.annotate import DEMO_NOTICE, NOTICE, annotate, to_png
from cxr_model.deidentify import deidentify
from cxr_model.gradcam import overlay_heatmap
from cxr_model.preprocessing import display_image, sniff_format
from serve.prediction import Prediction
from ui.views import percent

DISPLAY_SIDE = 1024  # the result view's image size; stored images keep full resolution
THUMBNAIL_SIDE = 160
MEDIA_TYPES = {"jpeg": "image/jpeg", "dicom": "application/dicom", "png": "image/png"}


def caption(prediction: Prediction) -> str:
    # The same rounding as the page's bars: 99.9% must not be burnt into the image as 100%.
    return f"{prediction.top_label} {percent(prediction.confidence)}"


def annotated(prediction: Prediction, image: Image.Image | None = None) -> Image.Image:
    notice = DEMO_NOTICE if prediction.output.model.synthetic_demo else NOTICE
    return annotate(image or prediction.request.original, caption(prediction), notice)


def gradcam_overlay(prediction: Prediction, image: Image.Image | None = None) -> Image.Image | None:
    if prediction.heatmap is None:
        return None
    return overlay_heatmap(image or prediction.request.original, prediction.heatmap)


def stored_images(prediction: Prediction) -> dict[str, bytes]:
    """What a save stores. Drawn and encoded only then: PNG encoding is the costliest CPU work
    after the model, and plain predictions should not pay for it."""
    images = {"original": deidentify(prediction.request.data), "annotated": to_png(annotated(prediction))}
    if prediction.heatmap is not None:
        images["gradcam"] = to_png(gradcam_overlay(prediction))
    return images


def display_copy(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    display = display_image(image).copy()
    display.thumbnail((side, side))
    return display


def jpeg(image: Image.Image, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# The pages' images are never kept by the browser: a shared workstation must hold no patient image
# once its user has logged out. API clients may cache for CXR_IMAGE_CACHE_S.
PAGE_IMAGE_CACHE = "private, no-store"


def image_response(data: bytes, cache_control: str, media_type: str | None = None) -> Response:
    """An image as an HTTP response, typed by its magic bytes (stored originals may be DICOM)."""
    media = media_type or MEDIA_TYPES.get(sniff_format(data), "image/png")
    return Response(data, media_type=media, headers={"Cache-Control": cache_control})
