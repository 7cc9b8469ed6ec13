import io

import numpy as np
from PIL import Image

from cxr_model.annotate import DEMO_NOTICE, annotate, to_png
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
    for size in (120, 1200):
        pixels = np.full((size, size), 90, np.uint8)
        out = annotate(Image.fromarray(pixels), "Normal 97%", DEMO_NOTICE)
        assert out.size == (size, size) and out.mode == "RGB"
        array = np.asarray(out)
        banners[size] = int(np.argmax((array[:, -1] == 90).all(axis=1)))  # first untouched row
        assert 0 < banners[size] < 0.3 * size  # readable, yet most of the image stays visible
        assert (array[banners[size] :] == 90).all()  # below the banner the image is untouched
        assert Image.open(io.BytesIO(to_png(out))).size == (size, size)
    assert banners[1200] >= 3 * banners[120]  # text grows with the image


def test_overlay_on_a_sixteen_bit_image():
    image = open_image(png_bytes(np.full((40, 60), 20000, np.uint16)), 10_000)
    heat = np.zeros((8, 8), np.float32)
    heat[2:4, 2:4] = 1.0
    out = overlay_heatmap(image, heat)
    assert out.size == (60, 40) and np.asarray(out).std() > 0
