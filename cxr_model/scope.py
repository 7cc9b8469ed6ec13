"""The out-of-scope gate: is this plausibly a frontal chest radiograph at all?

A classifier trained on four chest classes will put any picture into one of
them, often with high confidence. Two checks run before a label is shown:

1. **Image checks** (model-independent, before the model runs): a radiograph is
   greyscale, has contrast, and is smooth at the model's resolution. Colour
   photographs and screenshots, blank frames and noise fail one of these.
2. **Feature gate** (fitted per checkpoint in training): the Mahalanobis
   distance of the backbone's pooled features from the training images'
   features (mean and Ledoit-Wolf shrunk covariance). Its threshold is the
   validation split's quantile for a target false-rejection rate, so other body
   parts, other views and greyscale photographs that pass the image checks
   still land far from the training data.

Each rejection names a reason with a clinician-readable message. The measured
false-rejection and miss rates go into the model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SCOPE_VERSION = "cxr-scope-1"
GATE_FILE = "scope_gate.npz"

REASONS = {
    "colour_image": "This is a colour picture (a photograph or screenshot?), not a radiograph. "
    "Upload the chest X-ray image itself.",
    "blank_image": "This image is blank or almost uniform: there is no anatomy to read.",
    "noise_image": "This image is mostly noise, with no anatomical structure.",
    "unlike_chest_radiographs": "This image does not look like the frontal chest radiographs the model was "
    "trained on (another body part, view or kind of picture?). No label is given.",
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


@dataclass
class FeatureGate:
    """Mahalanobis distance to the training features; above ``threshold`` is out of scope."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        centred = np.asarray(features, dtype=np.float64) - self.mean
        squared = np.einsum("ij,jk,ik->i", centred, self.precision, centred)
        return np.sqrt(np.clip(squared, 0.0, None))

    def verdicts(self, features: np.ndarray) -> list[ScopeVerdict]:
        return [
            ScopeVerdict(
                bool(d <= self.threshold),
                None if d <= self.threshold else "unlike_chest_radiographs",
                {"feature_distance": float(d), "feature_threshold": self.threshold},
            )
            for d in self.distances(features)
        ]

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
    def load(cls, path: str | Path) -> "FeatureGate":
        with np.load(path, allow_pickle=False) as data:
            return cls(data["mean"].astype(np.float64), data["precision"].astype(np.float64), float(data["threshold"]))


def fit_feature_gate(
    train_features: np.ndarray, val_features: np.ndarray, false_rejection: float = 0.01
) -> FeatureGate:
    """Gaussian fitted on training features; threshold at the validation (1 - false_rejection) quantile."""
    from sklearn.covariance import LedoitWolf  # shrinkage: far fewer images than feature dimensions

    train = np.asarray(train_features, dtype=np.float64)
    estimate = LedoitWolf().fit(train)
    gate = FeatureGate(estimate.location_, estimate.precision_, float("inf"))
    # Round-trip through float32 first, so the threshold is set on the distances that will be served.
    gate = FeatureGate(
        gate.mean.astype(np.float32).astype(np.float64),
        gate.precision.astype(np.float32).astype(np.float64),
        float("inf"),
    )
    gate.threshold = float(np.quantile(gate.distances(val_features), 1.0 - false_rejection))
    return gate


class ScopeGateError(RuntimeError):
    """A checkpoint's gate file is missing or does not match its model card."""


def load_scope(directory: str | Path, card) -> tuple[ImageLimits, FeatureGate | None]:
    """The checkpoint's image limits and feature gate (None when the card has no fitted gate)."""
    from cxr_model.checkpoint import sha256_file

    scope = card.scope or {}
    limits = ImageLimits.from_dict(scope.get("image_limits"))
    gate_record = scope.get("feature_gate")
    if not gate_record:
        return limits, None
    path = Path(directory) / gate_record["file"]
    if not path.is_file():
        raise ScopeGateError(f"the model card names {path.name} but it is missing from {directory}")
    if sha256_file(path) != gate_record["sha256"]:
        raise ScopeGateError(f"{path} does not match the sha256 in its model card")
    return limits, FeatureGate.load(path)
