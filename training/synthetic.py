"""A synthetic, CXR-like data set in the Kaggle COVID-19 Radiography Database layout.

For tests and the demo only: no real radiographs can be downloaded here. Each
image is a frontal chest-like picture (body, dark lung fields, spine, heart
shadow, ribs) at 299x299, mostly mode L with some RGB, and each class carries
its own learnable structure:

- Normal: clear lung fields.
- COVID-19: bilateral, peripheral, lower-zone ground-glass patches.
- Lung Opacity: one dense consolidation in one lung.
- Viral Pneumonia: diffuse bilateral perihilar reticular (streaky) texture.

Position, scale, exposure, contrast and noise vary per image so that no single
pixel or global statistic gives the class away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

SIZE = 299
KAGGLE_FOLDERS = {
    "COVID-19": "COVID",
    "Lung Opacity": "Lung_Opacity",
    "Normal": "Normal",
    "Viral Pneumonia": "Viral Pneumonia",
}


def _ellipse(xx, yy, cx, cy, rx, ry):
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1.0


def _blob(xx, yy, cx, cy, sigma):
    return np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)))


def render_chest(label: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One synthetic radiograph for ``label`` as float32 [size, size] in [0, 1]."""
    scale = rng.uniform(0.92, 1.06)
    shift_x, shift_y = rng.uniform(-0.05, 0.05, size=2)
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    xx, yy = np.meshgrid(axis, axis)
    xx = (xx - shift_x) / scale
    yy = (yy - shift_y) / scale

    img = np.full((size, size), 0.05, dtype=np.float32)
    body = _ellipse(xx, yy, 0, 0.1, 0.88, 1.05)
    img[body] = 0.55
    left = _ellipse(xx, yy, -0.38, -0.05, 0.27, 0.56)
    right = _ellipse(xx, yy, 0.38, -0.05, 0.27, 0.56)
    lungs = left | right
    img[lungs] = 0.2
    # Ribs: thin bright arcs across both lung fields.
    for k in range(9):
        curve = -0.62 + k * 0.14 + 0.22 * xx**2
        img[lungs & (np.abs(yy - curve) < 0.012)] += 0.07
    img[np.abs(xx) < 0.06] = 0.72  # spine / mediastinum
    heart = _ellipse(xx, yy, 0.1, 0.32, 0.24, 0.2)
    img[heart] = np.maximum(img[heart], 0.62)

    pattern = np.zeros_like(img)
    if label == "COVID-19":
        for side in (-1, 1):
            for _ in range(rng.integers(2, 4)):
                cx = side * rng.uniform(0.5, 0.6)
                cy = rng.uniform(0.1, 0.42)
                pattern += 0.22 * _blob(xx, yy, cx, cy, rng.uniform(0.07, 0.11))
    elif label == "Lung Opacity":
        side = rng.choice((-1, 1))
        cx, cy = side * rng.uniform(0.3, 0.45), rng.uniform(-0.3, 0.3)
        pattern += 0.5 * _blob(xx, yy, cx, cy, rng.uniform(0.12, 0.17))
    elif label == "Viral Pneumonia":
        streaks = rng.normal(0, 1, size=(size, size)).astype(np.float32)
        streaks = ndimage.uniform_filter(streaks, size=3)
        perihilar = np.exp(-((np.abs(xx) - 0.28) ** 2) / 0.05 - (yy**2) / 0.25)
        pattern += perihilar * (0.12 + 0.25 * np.clip(streaks, 0, None))
    elif label != "Normal":
        raise ValueError(f"no synthetic pattern for {label!r}")
    img += pattern * lungs

    img = ndimage.gaussian_filter(img, sigma=rng.uniform(0.8, 1.6))
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-0.06, 0.06)
    img = img * gain + offset + rng.normal(0, 0.025, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def make_demo_dataset(
    out: str | Path, per_class: int = 50, seed: int = 0, rgb_fraction: float = 0.15, duplicates: int = 0
) -> dict[str, int]:
    """Write the Kaggle layout under ``out``; returns images written per label.

    ``duplicates`` byte-identical copies per class are added under new names,
    as the public data set has, so that split de-duplication is exercised.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    counts = {}
    for label, folder in KAGGLE_FOLDERS.items():
        images = out / folder / "images"
        masks = out / folder / "masks"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        written = []
        for i in range(1, per_class + 1):
            pixels = (render_chest(label, rng) * 255).round().astype(np.uint8)
            image = Image.fromarray(pixels)
            if rng.random() < rgb_fraction:
                image = image.convert("RGB")
            path = images / f"{folder}-{i}.png"
            image.save(path)
            written.append(path)
            # The real release ships lung masks beside the images; loaders must ignore them.
            Image.fromarray(((pixels > 40) * 255).astype(np.uint8)).resize((256, 256)).save(masks / path.name)
        for j in range(min(duplicates, len(written))):
            copy = images / f"{folder}-{per_class + j + 1}.png"
            copy.write_bytes(written[j].read_bytes())
        counts[label] = per_class + min(duplicates, len(written))
    return counts


# Pictures a chest X-ray service must refuse, for measuring the out-of-scope gate. Radiograph-like
# ones get the same blur, exposure and noise as render_chest, so that only their content differs.
OUT_OF_SCOPE_KINDS = ("colour_photo", "greyscale_photo", "blank", "noise", "limb_radiograph", "skull_radiograph")


def _photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """An everyday scene: sky, ground, a few coloured objects; float32 [size, size, 3] in [0, 1]."""
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    xx, yy = np.meshgrid(axis, axis)
    horizon = rng.uniform(-0.3, 0.4)
    sky, ground = rng.uniform(0.3, 1.0, size=3), rng.uniform(0.1, 0.7, size=3)
    img = np.where((yy < horizon)[..., None], sky * (0.7 + 0.3 * (yy[..., None] + 1) / 2), ground)
    for _ in range(rng.integers(3, 8)):
        cx, cy = rng.uniform(-0.8, 0.8, size=2)
        rx, ry = rng.uniform(0.08, 0.4, size=2)
        shape = (
            _ellipse(xx, yy, cx, cy, rx, ry)
            if rng.random() < 0.5
            else ((np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry))
        )
        img[shape] = rng.uniform(0, 1, size=3)
    img = ndimage.gaussian_filter(img, sigma=(1.0, 1.0, 0))
    return np.clip(img + rng.normal(0, 0.02, size=img.shape), 0, 1).astype(np.float32)


def _radiograph_finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = ndimage.gaussian_filter(img, sigma=rng.uniform(0.8, 1.6))
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-0.06, 0.06)
    return np.clip(img * gain + offset + rng.normal(0, 0.025, size=img.shape), 0, 1).astype(np.float32)


def _limb(rng: np.random.Generator, size: int) -> np.ndarray:
    """A forearm/leg: soft-tissue band with two long bones (bright cortex, darker marrow), rotated."""
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    xx, yy = np.meshgrid(axis, axis)
    angle = rng.uniform(-0.5, 0.5)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    img = np.full((size, size), 0.05, dtype=np.float32)
    img[np.abs(u) < rng.uniform(0.35, 0.5)] = 0.3
    for centre, half in ((-0.15, rng.uniform(0.06, 0.09)), (0.15, rng.uniform(0.05, 0.08))):
        distance = np.abs(u - centre)
        img[distance < half] = 0.85
        img[distance < half * 0.55] = 0.55
    return _radiograph_finish(img, rng)


def _skull(rng: np.random.Generator, size: int) -> np.ndarray:
    """A skull: bright elliptical vault, orbits and jaw."""
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    xx, yy = np.meshgrid(axis, axis)
    img = np.full((size, size), 0.05, dtype=np.float32)
    rx, ry = rng.uniform(0.6, 0.75), rng.uniform(0.75, 0.9)
    img[_ellipse(xx, yy, 0, -0.05, rx, ry)] = 0.8
    img[_ellipse(xx, yy, 0, -0.05, rx - 0.07, ry - 0.07)] = 0.4
    for side in (-1, 1):
        img[_ellipse(xx, yy, side * 0.25, 0.15, 0.13, 0.1)] = 0.2
    img[_ellipse(xx, yy, 0, 0.7, 0.4, 0.15) & ~_ellipse(xx, yy, 0, 0.65, 0.33, 0.1)] = 0.85
    return _radiograph_finish(img, rng)


def render_out_of_scope(kind: str, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """One picture of ``kind`` (see OUT_OF_SCOPE_KINDS) as a PIL image."""
    if kind in ("colour_photo", "greyscale_photo"):
        image = Image.fromarray((_photo(rng, size) * 255).round().astype(np.uint8), "RGB")
        return image if kind == "colour_photo" else image.convert("L")
    if kind == "blank":
        level = rng.uniform(0.0, 1.0)
        pixels = np.clip(level + rng.normal(0, 0.004, size=(size, size)), 0, 1)
    elif kind == "noise":
        pixels = (
            rng.uniform(0, 1, size=(size, size))
            if rng.random() < 0.5
            else np.clip(rng.normal(0.5, 0.2, size=(size, size)), 0, 1)
        )
    elif kind == "limb_radiograph":
        pixels = _limb(rng, size)
    elif kind == "skull_radiograph":
        pixels = _skull(rng, size)
    else:
        raise ValueError(f"unknown out-of-scope kind {kind!r}; known: {', '.join(OUT_OF_SCOPE_KINDS)}")
    return Image.fromarray((pixels * 255).round().astype(np.uint8))
