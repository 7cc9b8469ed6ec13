"""The annotated image: the original radiograph with the top label and confidence drawn on it.

The banner scales with the image, so it stays readable on a 299 px thumbnail
and on a 3000 px detector image alike.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

from cxr_model.preprocessing import display_image

NOTICE = "Decision support only - not for diagnostic use"
DEMO_NOTICE = "SYNTHETIC DEMO MODEL - not for clinical use"


def annotate(image: Image.Image, headline: str, detail: str = NOTICE) -> Image.Image:
    canvas = display_image(image).convert("RGB")
    width, height = canvas.size
    size = max(12, round(min(width, height) * 0.045))
    big = ImageFont.load_default(size=size)
    small = ImageFont.load_default(size=max(9, round(size * 0.6)))
    draw = ImageDraw.Draw(canvas, "RGBA")
    pad = max(4, size // 3)
    banner = pad * 3 + size + round(size * 0.6)
    draw.rectangle([0, 0, width, banner], fill=(0, 0, 0, 170))
    draw.text((pad, pad), headline, font=big, fill=(255, 255, 255, 255))
    draw.text((pad, pad * 2 + size), detail, font=small, fill=(255, 214, 102, 255))
    return canvas


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Level 3: a little larger than the default 6, several times faster to encode.
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
