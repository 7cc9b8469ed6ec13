"""Out-of-scope pictures for measuring the gate, from more than one source per kind.

A gate measured only on pictures drawn by the code it was developed against can
look perfect and still let real photographs through. So each kind mixes:

- **real pictures** where any can be had offline: the photographs and scans
  that ship inside scikit-image (``skimage.data``: camera, astronaut, coins,
  moon, a scanned page, faces, ...) and matplotlib (a portrait, a photographed
  box), cropped, mirrored, rotated and re-exposed so that no two are the same;
- **text screenshots** rendered with Pillow's fonts in light and dark themes;
- **generated pictures** from two independent generators: ``training.synthetic``
  and the ones below (hands, lateral skulls, gradients, speckle), which share
  no code with it.

Nothing here is used to fit or threshold a gate: the gates see only chest
radiographs. These pictures only measure them.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps
from scipy import ndimage

from training.synthetic import SIZE, render_out_of_scope

KINDS = (
    "colour_photo",
    "greyscale_photo",
    "text_screenshot",
    "blank",
    "noise",
    "limb_radiograph",
    "skull_radiograph",
)
SOURCES = {
    "colour_photo": "skimage.data and matplotlib sample photographs (crops, flips, rotations); training.synthetic",
    "greyscale_photo": "the same photographs and the LFW faces of skimage.data in greyscale; training.synthetic",
    "text_screenshot": "skimage.data's scanned page and text photograph; Pillow-rendered text in light and dark "
    "themes, greyscale and RGB",
    "blank": "training.synthetic; gradients and vignetted flat fields (training.ood_pictures)",
    "noise": "training.synthetic; salt-and-pepper and blurred speckle (training.ood_pictures)",
    "limb_radiograph": "training.synthetic forearms; hands with finger rays (training.ood_pictures)",
    "skull_radiograph": "training.synthetic frontal skulls; lateral skulls (training.ood_pictures)",
}
_COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
_GREY_PHOTOS = ("camera", "coins", "moon", "grass", "gravel", "brick", "clock")


@cache
def _photographs() -> tuple[list[Image.Image], list[Image.Image], np.ndarray, list[Image.Image]]:
    """(colour photos, greyscale photos, faces [N, H, W] in [0, 1], scanned text) as shipped."""
    import matplotlib
    import skimage.data

    def load(name: str) -> Image.Image:
        return Image.fromarray(np.asarray(getattr(skimage.data, name)()))

    sample = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
    colour = [load(n).convert("RGB") for n in _COLOUR_PHOTOS]
    colour += [Image.open(os.path.join(sample, f)).convert("RGB") for f in ("grace_hopper.jpg",)]
    colour += [Image.open(os.path.join(sample, "Minduka_Present_Blue_Pack.png")).convert("RGB")]
    grey = [load(n).convert("L") for n in _GREY_PHOTOS]
    text = [load("page"), load("text").convert("L")]
    return colour, grey, skimage.data.lfw_subset(), text


def _vary(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A different view of one picture: a crop of 40-100% of each side, maybe mirrored, rotated
    up to 15 degrees and re-exposed (gamma 0.6-1.6)."""
    width, height = image.size
    crop_w, crop_h = (max(16, int(side * rng.uniform(0.4, 1.0))) for side in (width, height))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    view = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        view = ImageOps.mirror(view)
    view = view.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR, expand=False)
    gamma = float(rng.uniform(0.6, 1.6))
    return view.point(lambda v: round(255 * (v / 255) ** gamma))


def _font(size: int, rng: np.random.Generator) -> ImageFont.ImageFont:
    faces = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
    face = faces[int(rng.integers(len(faces)))]
    try:  # Debian's fonts-dejavu-core when present; Pillow's own font otherwise
        return ImageFont.truetype(os.path.join("/usr/share/fonts/truetype/dejavu", face), size)
    except OSError:
        return ImageFont.load_default(size=size)


_WORDS = (
    "patient study series accession report findings impression radiology department worklist order "
    "status pending signed preliminary final contrast history comparison technique the of and with no "
    "acute cardiopulmonary process lungs are clear heart size normal 2026-11-29 12:04 ID 0042315"
).split()


def _text_screenshot(rng: np.random.Generator) -> Image.Image:
    width, height = int(rng.integers(320, 1400)), int(rng.integers(240, 1000))
    dark = rng.random() < 0.3
    background, ink = (int(rng.integers(0, 50)), int(rng.integers(180, 256))) if dark else (255, 0)
    image = Image.new("L", (width, height), background)
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(11, 30))
    font = _font(size, rng)
    y = int(rng.integers(2, 20))
    while y < height:
        words = rng.choice(_WORDS, size=int(rng.integers(2, 14)))
        draw.text((int(rng.integers(4, 40)), y), " ".join(words), fill=ink, font=font)
        y += int(size * rng.uniform(1.3, 2.2))
    return image.convert("RGB") if rng.random() < 0.5 else image  # screenshots are RGB, grey UI or not


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    return np.meshgrid(axis, axis)


def _finish(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    pixels = ndimage.gaussian_filter(pixels, sigma=float(rng.uniform(0.5, 2.0)))
    pixels = pixels + rng.normal(0, rng.uniform(0.005, 0.03), size=pixels.shape)
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))


def _hand(rng: np.random.Generator, size: int) -> Image.Image:
    """A hand: palm, five finger rays of phalanges with joint gaps, wrist bones."""
    xx, yy = _grid(size)
    pixels = np.full((size, size), rng.uniform(0.0, 0.1), np.float32)
    pixels[(np.abs(xx) < 0.45) & (yy > 0.0) & (yy < 0.9)] = 0.3  # palm and wrist soft tissue
    spread = rng.uniform(0.12, 0.2)
    for finger in range(5):
        base = -0.4 + finger * spread * 1.1
        angle = (finger - 2) * rng.uniform(0.05, 0.15)
        u, v = xx - base - angle * yy, yy
        tip = -0.85 + abs(finger - 2) * 0.15 + (0.35 if finger == 0 else 0)
        pixels[(np.abs(u) < 0.07) & (v > tip) & (v < 0.2)] = 0.32
        for start in np.linspace(tip + 0.02, 0.1, 4)[:-1]:
            pixels[(np.abs(u) < 0.035) & (v > start) & (v < start + 0.17)] = 0.8
    for _ in range(8):  # carpal bones
        cx, cy = rng.uniform(-0.3, 0.3), rng.uniform(0.35, 0.6)
        pixels[((xx - cx) / 0.07) ** 2 + ((yy - cy) / 0.06) ** 2 <= 1] = 0.75
    return _finish(pixels, rng)


def _lateral_skull(rng: np.random.Generator, size: int) -> Image.Image:
    """A lateral skull: an egg-shaped vault with its bright table, the face and jaw to one side."""
    xx, yy = _grid(size)
    if rng.random() < 0.5:
        xx = -xx
    pixels = np.full((size, size), rng.uniform(0.0, 0.1), np.float32)
    vault = ((xx + 0.1) / 0.75) ** 2 + ((yy + 0.1) / 0.62) ** 2
    pixels[vault <= 1.0] = 0.85
    pixels[vault <= 0.8] = 0.45
    face = (xx > 0.35) & (xx < 0.8) & (yy > 0.0) & (yy < 0.7)
    pixels[face] = np.maximum(pixels[face], 0.55)
    jaw = (np.abs(yy - 0.62 - 0.3 * (xx - 0.4)) < 0.05) & (xx > 0.0) & (xx < 0.75)
    pixels[jaw] = 0.85
    pixels[((xx - 0.55) / 0.12) ** 2 + ((yy - 0.15) / 0.1) ** 2 <= 1] = 0.3  # orbit
    pixels[(np.abs(xx + 0.0) < 0.12) & (yy > 0.5)] = 0.7  # cervical spine
    return _finish(pixels, rng)


def _blank(rng: np.random.Generator, size: int) -> Image.Image:
    xx, yy = _grid(size)
    level = rng.uniform(0.05, 0.95)
    if rng.random() < 0.5:  # a gentle exposure gradient
        pixels = level + rng.uniform(-0.03, 0.03) * xx + rng.uniform(-0.03, 0.03) * yy
    else:  # a flat field with the vignetting of an empty detector
        pixels = level - rng.uniform(0.0, 0.04) * (xx**2 + yy**2)
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))


def _noise(rng: np.random.Generator, size: int) -> Image.Image:
    if rng.random() < 0.5:  # salt and pepper on grey
        pixels = np.full((size, size), rng.uniform(0.2, 0.8))
        flips = rng.random((size, size))
        share = rng.uniform(0.2, 0.5)
        pixels[flips < share / 2], pixels[flips > 1 - share / 2] = 0.0, 1.0
    else:  # speckle: noise blurred just enough to look grainy
        pixels = ndimage.gaussian_filter(rng.normal(0.5, 0.25, (size, size)), sigma=rng.uniform(0.3, 0.8))
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))


def _real(kind: str, rng: np.random.Generator) -> Image.Image:
    colour, grey, faces, text = _photographs()
    if kind == "colour_photo":
        return _vary(colour[int(rng.integers(len(colour)))], rng)
    if kind == "greyscale_photo":
        if rng.random() < 0.25:
            face = Image.fromarray((faces[int(rng.integers(len(faces)))] * 255).round().astype(np.uint8))
            return face.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        pool = grey + colour
        return _vary(pool[int(rng.integers(len(pool)))].convert("L"), rng)
    if kind == "text_screenshot":
        return _vary(text[int(rng.integers(len(text)))], rng) if rng.random() < 0.3 else _text_screenshot(rng)
    drawn = {"blank": _blank, "noise": _noise, "limb_radiograph": _hand, "skull_radiograph": _lateral_skull}
    return drawn[kind](rng, SIZE)


def out_of_scope_pictures(kind: str, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """``count`` pictures of ``kind``: alternately from the sources above and from training.synthetic
    (text screenshots: all from the sources above, which training.synthetic cannot draw)."""
    if kind not in KINDS:
        raise ValueError(f"unknown out-of-scope kind {kind!r}; known: {', '.join(KINDS)}")
    synthetic = kind in ("colour_photo", "greyscale_photo", "blank", "noise", "limb_radiograph", "skull_radiograph")
    return [render_out_of_scope(kind, rng) if synthetic and i % 2 else _real(kind, rng) for i in range(count)]
