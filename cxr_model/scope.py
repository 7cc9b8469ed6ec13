"""The out-of-scope gate: is this plausibly a frontal chest radiograph at all?

A classifier trained on four chest classes will put any picture into one of
them, often with high confidence. Two checks run before a label is shown:

1. **Image checks** (model-independent, before the model runs): a radiograph is
   greyscale, has contrast, and is smooth at the model's resolution. Colour
   photographs and screenshots, blank frames and noise fail one of these.
2. **Fitted gates** (per checkpoint, in training), each a Mahalanobis distance
   from the training split (mean and Ledoit-Wolf shrunk covariance) with its
   threshold at the validation split's quantile for a target false-rejection
   rate:
   - the *feature gate* on the backbone's pooled features (what the model sees);
   - the *layout gate* on a model-independent 16 x 16 picture of the image plus
     its grey-level quantiles (where a chest radiograph is bright and dark).
   An image must pass both. Other body parts, other views, greyscale
   photographs and screenshots of text that pass the image checks land far
   from the training data in one or both.

Each rejection names a reason with a clinician-readable message. The measured
false-rejection and miss rates go into the model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SCOPE_VERSION = "cxr-scope-2"
GATE_FILE = "scope_gate.npz"
LAYOUT_FILE = "layout_gate.npz"
LAYOUT_GRID = 16  # 16 x 16 blocks: lungs, mediastinum, shoulders and diaphragm each span several
LAYOUT_QUANTILES = np.linspace(0.05, 0.95, 10)

REASONS = {
    "colour_image": "This is a colour picture (a photograph or screenshot?), not a radiograph. "
    "Upload the chest X-ray image itself.",
    "blank_image": "This image is blank or almost uniform: there is no anatomy to read.",
    "noise_image": "This image is mostly noise, with no anatomical structure.",
    "unlike_chest_radiographs": "This image does not look like the frontal chest radiographs the model was "
    "trained on (another body part, view or kind of picture?). No label is given.",
    "unlike_synthetic_demo_images": "This demo model was trained only on generated pictures, so it refuses real "
    "radiographs too: the refusal says nothing about your image. To analyse real chest X-rays, train on real "
    "data (CXR_DEMO_DATA=/path/to/dataset bash scripts/run.sh, or cxr train) or set CXR_CHECKPOINT to a "
    "checkpoint trained on real radiographs.",
}


@dataclass(frozen=True)
class ImageLimits:
    """Bounds a radiograph stays within; stored in the model card so they travel with the model."""

    # Mean per-pixel chroma (max - min channel, 0-1). Greyscale saved as RGB is ~0; JPEG tints ~0.01.
    max_colourfulness: float = 0.08
    # Standard deviation of grey levels (0-1) at model size; radiographs are ~0.15-0.3.
    min_contrast: float = 0.02
    # Mean absolute neighbour difference / standard deviation: ~1.13 for white noise, ~0.1-0.3 for a radiograph.
    max_roughness: float = 0.6

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "ImageLimits":
        return cls(**(data or {}))


@dataclass(frozen=True)
class ScopeVerdict:
    in_scope: bool
    reason: str | None = None
    measures: dict | None = None

    @property
    def message(self) -> str | None:
        return REASONS.get(self.reason) if self.reason else None

    def to_dict(self) -> dict:
        return {
            "in_scope": self.in_scope,
            "reason": self.reason,
            "message": self.message,
            "measures": self.measures or {},
        }


def colourfulness(image: Image.Image) -> float:
    if image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return 0.0  # greyscale modes (L, I;16, I, F) carry no colour by construction
    thumb = image.convert("RGB")
    thumb.thumbnail((96, 96))
    rgb = np.asarray(thumb, dtype=np.float32) / 255.0
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean())


def grey_measures(levels: np.ndarray) -> dict:
    """Contrast and roughness of model-size grey levels (uint8, or float in [0, 1])."""
    grey = levels.reshape(levels.shape[-2:]).astype(np.float32)
    if levels.dtype == np.uint8:
        grey /= 255.0
    contrast = float(grey.std())
    step = (np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()) / 2
    return {"contrast": contrast, "roughness": float(step / max(contrast, 1e-6))}


def check_image(image: Image.Image, levels: np.ndarray, limits: ImageLimits) -> ScopeVerdict:
    """The image checks, cheapest first; ``levels`` are the model-size grey levels of ``image``."""
    measures = {"colourfulness": colourfulness(image)}
    if measures["colourfulness"] > limits.max_colourfulness:
        return ScopeVerdict(False, "colour_image", measures)
    measures.update(grey_measures(levels))
    if measures["contrast"] < limits.min_contrast:
        return ScopeVerdict(False, "blank_image", measures)
    if measures["roughness"] > limits.max_roughness:
        return ScopeVerdict(False, "noise_image", measures)
    return ScopeVerdict(True, None, measures)


class Mahalanobis:
    """Distance from a Gaussian fitted on chest radiographs; above ``threshold`` is out of scope."""

    def __init__(self, mean: np.ndarray, precision: np.ndarray, threshold: float):
        self.mean, self.precision, self.threshold = mean, precision, threshold

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        centred = np.asarray(vectors, dtype=np.float64) - self.mean
        # One BLAS matrix product: a three-operand einsum here cost ~7 ms per image at 2208 features.
        squared = ((centred @ self.precision) * centred).sum(axis=1)
        return np.sqrt(np.clip(squared, 0.0, None))

    def save(self, path: str | Path) -> None:
        # float32 on disk: DenseNet-161's 2208-wide precision matrix is 19 MB instead of 39.
        with open(path, "wb") as handle:
            np.savez(
                handle,
                mean=self.mean.astype(np.float32),
                precision=self.precision.astype(np.float32),
                threshold=np.float64(self.threshold),
            )

    @classmethod
    def load(cls, path: str | Path):
        with np.load(path, allow_pickle=False) as data:
            return cls(data["mean"].astype(np.float64), data["precision"].astype(np.float64), float(data["threshold"]))

    @classmethod
    def fit(cls, train: np.ndarray, val: np.ndarray, false_rejection: float = 0.01):
        """Gaussian fitted on ``train``; threshold at the ``val`` (1 - false_rejection) quantile."""
        from sklearn.covariance import LedoitWolf  # shrinkage: far fewer images than dimensions

        estimate = LedoitWolf().fit(np.asarray(train, dtype=np.float64))
        # Round-trip through float32 first, so the threshold is set on the distances that will be served.
        gate = cls(
            estimate.location_.astype(np.float32).astype(np.float64),
            estimate.precision_.astype(np.float32).astype(np.float64),
            float("inf"),
        )
        gate.threshold = float(np.quantile(gate.distances(val), 1.0 - false_rejection))
        return gate


class FeatureGate(Mahalanobis):
    """On the backbone's pooled features: what the model itself sees as unlike its training images."""


class LayoutGate(Mahalanobis):
    """On a model-independent picture of the image: where it is bright and dark, and its grey-level
    distribution. A frontal chest radiograph has a fixed layout (dark lungs either side of a bright
    mediastinum, shoulders above, diaphragm below) that photographs, text, skulls and limbs lack;
    the feature gate of a model trained from scratch on a few thousand radiographs can miss those,
    because its features never had to tell them apart."""

    @staticmethod
    def describe(levels: np.ndarray) -> np.ndarray:
        """Model-size grey levels ([S, S] or [1, S, S]; uint8 or float in [0, 1]) -> descriptor."""
        grey = levels.reshape(levels.shape[-2:])
        grey = grey.astype(np.float32) / 255.0 if grey.dtype == np.uint8 else grey.astype(np.float32)
        grid = np.asarray(Image.fromarray(grey).resize((LAYOUT_GRID, LAYOUT_GRID), Image.Resampling.BOX))
        layout = grid.astype(np.float64).ravel()
        # Exposure-free layout: the same anatomy at another window still has the same shape.
        layout = (layout - layout.mean()) / max(float(layout.std()), 1e-3)
        return np.concatenate([layout, np.quantile(grey, LAYOUT_QUANTILES)])

    def level_distances(self, levels: list[np.ndarray]) -> np.ndarray:
        return self.distances(np.stack([self.describe(g) for g in levels]))


@dataclass(frozen=True)
class ScopeGates:
    """The fitted half of the out-of-scope gate: an image is in scope only if every gate accepts it."""

    features: FeatureGate | None = None
    layout: LayoutGate | None = None
    reason: str = "unlike_chest_radiographs"  # what a refusal says (a synthetic demo model says so)

    def verdicts(self, features: np.ndarray, levels: list[np.ndarray]) -> list[ScopeVerdict]:
        """One verdict per image from its pooled features and its model-size grey levels."""
        measures: list[dict] = [{} for _ in levels]
        refused = np.zeros(len(levels), bool)
        for name, gate, values in (
            ("feature", self.features, lambda: self.features.distances(features)),
            ("layout", self.layout, lambda: self.layout.level_distances(levels)),
        ):
            if gate is None or not len(levels):
                continue
            for i, d in enumerate(values()):
                measures[i] |= {f"{name}_distance": float(d), f"{name}_threshold": gate.threshold}
                refused[i] |= bool(d > gate.threshold)
        return [ScopeVerdict(not r, self.reason if r else None, m) for r, m in zip(refused, measures)]


def fit_feature_gate(
    train_features: np.ndarray, val_features: np.ndarray, false_rejection: float = 0.01
) -> FeatureGate:
    return FeatureGate.fit(train_features, val_features, false_rejection)


def fit_layout_gate(train_levels, val_levels, false_rejection: float = 0.01) -> LayoutGate:
    describe = LayoutGate.describe
    return LayoutGate.fit(
        np.stack([describe(g) for g in train_levels]), np.stack([describe(g) for g in val_levels]), false_rejection
    )


class ScopeGateError(RuntimeError):
    """A checkpoint's gate file is missing or does not match its model card."""


def _verified(directory: Path, record: dict, gate_type):
    from cxr_model.checkpoint import sha256_file

    path = directory / record["file"]
    if not path.is_file():
        raise ScopeGateError(f"the model card names {path.name} but it is missing from {directory}")
    if sha256_file(path) != record["sha256"]:
        raise ScopeGateError(f"{path} does not match the sha256 in its model card")
    return gate_type.load(path)


def load_scope(directory: str | Path, card) -> tuple[ImageLimits, ScopeGates | None]:
    """The checkpoint's image limits and fitted gates (None when the card has no fitted gate)."""
    scope = card.scope or {}
    limits = ImageLimits.from_dict(scope.get("image_limits"))
    records = scope.get("feature_gate"), scope.get("layout_gate")
    if not any(records):
        return limits, None
    features, layout = (
        _verified(Path(directory), record, gate_type) if record else None
        for record, gate_type in zip(records, (FeatureGate, LayoutGate))
    )
    reason = "unlike_synthetic_demo_images" if card.synthetic_demo else "unlike_chest_radiographs"
    return limits, ScopeGates(features, layout, reason)
