"""The annotated image: the radiograph with the top label and confidence in a banner. The text
scales with the image (3000 px detector images) but stays legible on a 299 px one; a line too long
for the width is set smaller, down to that minimum, then wrapped: no text runs off the edge."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from cxr_model.preprocessing import display_image

NOTICE = "Decision support only - not for diagnostic use"
DEMO_NOTICE = "SYNTHETIC DEMO MODEL - not for clinical use"
HEADLINE_SCALE = 0.045  # of the short side: 135 px on a 3000 px image
NOTICE_SCALE = 0.6  # of the headline: read after the finding, though never below MIN_NOTICE
# Font sizes (px) legible on a 299 px image at 1:1; below 12 px the font's 2 px space runs words together.
MIN_HEADLINE, MIN_NOTICE = 14, 12
# Both text colours keep >= 7:1 contrast (WCAG AAA) on it even over white; anatomy still shows faintly.
BANNER = (0, 0, 0, 200)
HEADLINE_FILL, NOTICE_FILL = (255, 255, 255), (255, 214, 102)


@dataclass(frozen=True)
class Line:
    xy: tuple[int, int]  # left, top of the ascender
    text: str
    font: ImageFont.FreeTypeFont
    fill: tuple[int, int, int]


def fit(text: str, size: int, minimum: int, width: int) -> tuple[ImageFont.FreeTypeFont, list[str]]:
    """The largest font from ``size`` down to ``minimum`` that sets ``text`` within ``width``; at the
    minimum the words wrap (only one word wider than the image, under ~90 px, could overflow)."""
    font = ImageFont.load_default(size=size)
    while size > minimum and font.getlength(text) > width:
        # Width is near proportional to size: jump most of the way, then step down.
        size = max(minimum, min(size - 1, int(size * width / font.getlength(text))))
        font = ImageFont.load_default(size=size)
    rows: list[str] = []
    for word in text.split():
        if rows and font.getlength(f"{rows[-1]} {word}") <= width:
            rows[-1] += f" {word}"
        else:
            rows.append(word)
    return font, rows


def layout(size: tuple[int, int], headline: str, detail: str) -> tuple[int, list[Line]]:
    """The banner's height and its lines of text for an image of ``size`` (width, height)."""
    nominal = round(min(size) * HEADLINE_SCALE)
    pad = max(4, nominal // 3)
    lines, top = [], pad
    texts = ((headline, 1.0, MIN_HEADLINE, HEADLINE_FILL), (detail, NOTICE_SCALE, MIN_NOTICE, NOTICE_FILL))
    for text, scale, minimum, fill in texts:
        font, rows = fit(text, max(minimum, round(nominal * scale)), minimum, size[0] - 2 * pad)
        for row in rows:
            lines.append(Line((pad, top), row, font, fill))
            top += sum(font.getmetrics())  # ascent + descent: wrapped rows never touch
        top += pad
    return top, lines


def draw_banner(canvas: Image.Image, banner: int, lines: list[Line]) -> Image.Image:
    draw = ImageDraw.Draw(canvas, "RGBA")
    draw.rectangle([0, 0, canvas.width - 1, banner - 1], fill=BANNER)
    for line in lines:
        draw.text(line.xy, line.text, font=line.font, fill=line.fill)
    return canvas


def probability_text(value: float, digits: int = 1) -> str:
    """A model's probability as people read it: never "100.0%" or "0.0%", which read as certainty
    (a calibrated model's 0.99996 is not). Past the last step shown it is ">99.9%" or "<0.1%"."""
    step = 10.0**-digits
    shown = value * 100
    if shown >= 100 - step / 2:
        return f">{100 - step:.{digits}f}%"
    if shown < step / 2:
        return f"<{step:.{digits}f}%"
    return f"{shown:.{digits}f}%"


def caption(label: str, probability: float) -> str:
    """The banner's headline: the finding and its probability, as the pages show it."""
    return f"{label} {probability_text(probability)}"


def annotate(image: Image.Image, headline: str, detail: str = NOTICE) -> Image.Image:
    canvas = display_image(image).convert("RGB")
    return draw_banner(canvas, *layout(canvas.size, headline, detail))


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Level 3: a little larger than the default 6, several times faster to encode.
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
