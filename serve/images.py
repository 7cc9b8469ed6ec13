"""The pictures a prediction yields: the annotated radiograph, the Grad-CAM overlay, display and
thumbnail sizes, and stored images as HTTP responses.

A save stores the upload as received and, with Grad-CAM, the 8-bit heatmap (``stored_images``);
the annotated picture and the overlay are drawn from the record when first asked for
(``render_view``) and then cached by the Ingress (``ViewCache``): records never change."""

from __future__ import annotations

import io
from collections import OrderedDict

import numpy as np
from PIL import Image
from starlette.responses import Response

from cxr_model.annotate import DEMO_NOTICE, NOTICE, annotate, caption, to_png
from cxr_model.deidentify import deidentify
from cxr_model.gradcam import overlay_heatmap
from cxr_model.preprocessing import display_image, open_image, sniff_format
from serve.prediction import Prediction
from serve.records import ViewSource

DISPLAY_SIDE = 1024  # the result view's image size; stored images keep full resolution
THUMBNAIL_SIDE = 160
MEDIA_TYPES = {"jpeg": "image/jpeg", "dicom": "application/dicom", "png": "image/png"}


def annotated(prediction: Prediction, image: Image.Image | None = None) -> Image.Image:
    notice = DEMO_NOTICE if prediction.output.model.synthetic_demo else NOTICE
    return annotate(image or prediction.request.original, caption(prediction.top_label, prediction.confidence), notice)


def gradcam_overlay(prediction: Prediction, image: Image.Image | None = None) -> Image.Image | None:
    if prediction.heatmap is None:
        return None
    return overlay_heatmap(image or prediction.request.original, prediction.heatmap)


def stored_images(prediction: Prediction) -> dict[str, bytes]:
    """What a save stores: the upload as received (a DICOM file's preamble zeroed), no re-encoding,
    and the Grad-CAM heatmap as a small 8-bit PNG when one was asked for."""
    images = {"original": deidentify(prediction.request.data)}
    if prediction.heatmap is not None:
        heat = Image.fromarray((np.clip(prediction.heatmap, 0, 1) * 255).round().astype(np.uint8))
        images["heatmap"] = to_png(heat)
    return images


def render_view(source: ViewSource, max_pixels: int) -> bytes:
    """A stored record's picture: as stored, or drawn from its original (and heatmap) and record."""
    if source.stored is not None:
        return source.stored
    image = open_image(source.original, max_pixels)
    if source.kind == "gradcam":
        heatmap = np.asarray(Image.open(io.BytesIO(source.heatmap)), dtype=np.float32) / 255.0
        return to_png(overlay_heatmap(image, heatmap))
    notice = DEMO_NOTICE if source.synthetic_demo else NOTICE
    return to_png(annotate(image, caption(source.top_label, source.confidence), notice))


def browser_png(data: bytes, max_pixels: int) -> bytes:
    """A stored DICOM original as a picture a browser shows (the API serves the file itself)."""
    return to_png(display_image(open_image(data, max_pixels)))


class ViewCache:
    """Drawn pictures by (prediction, kind), least recently used first out, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size = max_bytes, 0
        self.items: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def get(self, key: tuple[str, str]) -> bytes | None:
        data = self.items.get(key)
        if data is not None:
            self.items.move_to_end(key)
        return data

    def put(self, key: tuple[str, str], data: bytes) -> None:
        if len(data) > self.max_bytes or key in self.items:
            return
        self.items[key] = data
        self.size += len(data)
        while self.size > self.max_bytes:
            self.size -= len(self.items.popitem(last=False)[1])


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
