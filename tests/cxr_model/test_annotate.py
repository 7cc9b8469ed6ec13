import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cxr_model.annotate import (
    DEMO_NOTICE,
    HEADLINE_FILL,
    MIN_HEADLINE,
    MIN_NOTICE,
    NOTICE,
    NOTICE_FILL,
    annotate,
    draw_banner,
    layout,
    to_png,
)
from cxr_model.gradcam import overlay_heatmap
from cxr_model.preprocessing import display_image, open_image
from tests.helpers import png_bytes


def test_sixteen_bit_radiographs_are_scaled_for_display():
    image = open_image(png_bytes(np.full((50, 50), 32896, np.uint16)), 10_000)
    assert image.mode.startswith("I")
    shown = display_image(image)
    assert shown.mode == "L" and np.asarray(shown).mean() == 128  # 32896 / 257


def test_annotation_banner_scales_with_the_image_and_keeps_the_rest():
    banners = {}
    for size in (299, 1200):  # a smaller image gives more of itself to the banner: its text keeps a legible size
        pixels = np.full((size, size), 90, np.uint8)
        out = annotate(Image.fromarray(pixels), "Normal 97%", DEMO_NOTICE)
        assert out.size == (size, size) and out.mode == "RGB"
        array = np.asarray(out)
        banners[size] = int(np.argmax((array[:, -1] == 90).all(axis=1)))  # first untouched row
        assert 0 < banners[size] < 0.3 * size  # readable, yet most of the image stays visible
        assert (array[banners[size] :] == 90).all()  # below the banner the image is untouched
        assert Image.open(io.BytesIO(to_png(out))).size == (size, size)
    assert banners[1200] >= 3 * banners[299]  # text grows with the image


def test_overlay_on_a_sixteen_bit_image():
    image = open_image(png_bytes(np.full((40, 60), 20000, np.uint16)), 10_000)
    heat = np.zeros((8, 8), np.float32)
    heat[2:4, 2:4] = 1.0
    out = overlay_heatmap(image, heat)
    assert out.size == (60, 40) and np.asarray(out).std() > 0


# Legibility. Headlines: one the service writes, and longer ones with a low-confidence note, up to
# the longest label (NIH-14): longer than any caption the service writes today.
HEADLINES = ("COVID-19 97.3%", "Viral Pneumonia 64.0% - low confidence", "Pleural Thickening 51.2% - low confidence")
LONGEST = HEADLINES[-1]
# The smallest font sizes (px) legible at 1:1 on a 299 px image, by line colour: headline, notice.
LEGIBLE = {HEADLINE_FILL: 14, NOTICE_FILL: 11}
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "annotate"


@pytest.fixture
def save_artifact():
    """Keeps a picture in artifacts/annotate/ (gitignored) for a person to look at, when CXR_ARTIFACTS is set."""

    def save(name: str, image: Image.Image) -> None:
        if os.environ.get("CXR_ARTIFACTS"):
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            image.save(ARTIFACTS / name)

    return save


@pytest.fixture(scope="module")
def radiograph(real_sample) -> Image.Image:
    """A real 299 px radiograph, as uploaded."""
    image = Image.open(sorted(real_sample.glob("*/images/*.png"))[0])
    image.load()
    return image


def luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG relative luminance of sRGB colours (..., 3)."""
    c = np.asarray(rgb, np.float64) / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) @ [0.2126, 0.7152, 0.0722]


def measure(image: Image.Image, headline: str, notice: str) -> tuple[Image.Image, int, list[int]]:
    """Draws the banner with and without its text and checks every line where it was drawn: inside
    the image and the banner, at a legible size, in its own colour, in high contrast to the banner
    behind it. Returns the annotated picture, the banner's height and each line's ink height."""
    width, height = image.size
    banner, lines = layout(image.size, headline, notice)
    annotated = annotate(image, headline, notice)
    drawn = np.asarray(annotated)
    bare = np.asarray(draw_banner(display_image(image).convert("RGB"), banner, []))
    assert np.array_equal(drawn[banner:], bare[banner:])  # the text stays on the banner
    drawn, bare = drawn[:banner].astype(np.int16), bare[:banner].astype(np.int16)
    ink = (drawn != bare).any(axis=-1)
    boxes = np.zeros_like(ink)
    heights = []
    ruler = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for line in lines:
        left, top, right, bottom = ruler.textbbox(line.xy, line.text, font=line.font)
        assert 0 <= left and right <= width and 0 <= top and bottom <= banner, f"{line.text!r} is cut off"
        assert line.font.size >= LEGIBLE[line.fill], f"{line.text!r} is set too small"
        boxes[top:bottom, left:right] = True
        here = ink[top:bottom, left:right]
        rows = np.flatnonzero(here.any(axis=1))
        heights.append(int(rows[-1] - rows[0] + 1))
        # The glyphs really are that size: capitals and digits reach about 0.7 of the font size.
        assert heights[-1] >= 0.6 * line.font.size
        # Stems are drawn in the text colour itself, not only in anti-aliased shades of it.
        solid = (np.abs(drawn[top:bottom, left:right][here] - line.fill).max(axis=-1) <= 24).sum()
        assert solid >= 0.1 * here.sum(), f"{line.text!r} is faint"
        behind = luminance(bare[top:bottom, left:right]).max()
        assert (luminance(line.fill) + 0.05) / (behind + 0.05) >= 7, f"{line.text!r} has too little contrast"
    assert not (ink & ~boxes).any()  # every drawn pixel belongs to a measured line
    return annotated, banner, heights


@pytest.mark.parametrize("size", [(299, 299), (3000, 3000), (3000, 2500), (2500, 3000)])
def test_banner_text_is_legible_on_real_radiographs_small_and_large(size, radiograph, save_artifact):
    image = radiograph if radiograph.size == size else radiograph.resize(size, Image.Resampling.BICUBIC)
    short = min(size)
    for headline in HEADLINES:
        for notice in (NOTICE, DEMO_NOTICE):
            annotated, banner, heights = measure(image, headline, notice)
            assert banner <= 0.2 * size[1]  # most of the radiograph stays in view
            # In proportion to the image: the headline's capitals are some 3% of its short side.
            assert heights[0] >= 0.03 * short
            if headline == LONGEST and notice == NOTICE:
                save_artifact(f"annotated-{size[0]}x{size[1]}.png", annotated)


@pytest.mark.parametrize("level", [255, 0])
@pytest.mark.parametrize("side", [299, 3000])
def test_banner_text_keeps_its_contrast_over_white_and_black(level, side):
    measure(Image.fromarray(np.full((side, side), level, np.uint8)), LONGEST, DEMO_NOTICE)


def test_text_grows_with_the_image(radiograph):
    small = measure(radiograph, HEADLINES[0], NOTICE)[2]
    large = measure(radiograph.resize((3000, 3000), Image.Resampling.BICUBIC), HEADLINES[0], NOTICE)[2]
    assert large[0] >= 8 * small[0] and large[1] >= 5 * small[1]  # 10x the pixels; the minimums hold on 299 px


@pytest.mark.parametrize("size", [(160, 400), (120, 120)])
def test_on_a_narrow_image_long_lines_wrap_at_the_legible_size(size):
    banner, lines = layout(size, LONGEST, NOTICE)
    assert len({line.xy[1] for line in lines}) > 2  # the headline, or the notice, took more than one row
    assert {line.font.size for line in lines} == {MIN_HEADLINE, MIN_NOTICE}
    measure(Image.fromarray(np.full(size[::-1], 128, np.uint8)), LONGEST, NOTICE)


def test_a_headline_too_long_for_the_width_is_set_smaller_before_it_wraps():
    image = Image.fromarray(np.full((3000, 3000), 128, np.uint8))
    too_long = "Pleural Thickening 51.2%, Effusion 48.9%, Atelectasis 40.1% - low confidence"
    _, usual = layout(image.size, LONGEST, NOTICE)
    _, lines = layout(image.size, too_long, NOTICE)
    headline = [line for line in lines if line.fill == HEADLINE_FILL]
    assert len(headline) == 1 and LEGIBLE[HEADLINE_FILL] <= headline[0].font.size < usual[0].font.size
    measure(image, too_long, NOTICE)
