"""The typed boundary between the Ingress and ``BatchedClassifier``: what a prediction returns,
and the refusals that cross the Ray handle as exceptions (Ray re-raises them in the caller as
instances of the same class)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from cxr_model.checkpoint import ModelCard
from cxr_model.scope import ScopeVerdict


@dataclass(frozen=True)
class ModelInfo:
    """Which model answered: shown in every response and stored with every record (traceability)."""

    runtime: str  # onnx | torch
    precision: str  # fp32, int8 (the opt-in quantised export), or bf16 (torch on a GPU)
    name: str
    version: str
    backbone: str
    task: str
    labels: list[str]
    thresholds: list[float]
    weights_sha256: str
    preprocessing_version: str
    input_size: int
    synthetic_demo: bool
    calibration_temperature: float
    low_confidence_below: float
    code_version: str
    scope_gate: dict

    @classmethod
    def from_card(cls, card: ModelCard, runtime: str, precision: str = "fp32") -> ModelInfo:
        scope = card.scope or {}
        return cls(
            runtime=runtime,
            precision=precision,
            name=card.name,
            version=card.version,
            backbone=card.backbone,
            task=card.task,
            labels=list(card.labels),
            thresholds=list(card.thresholds),
            weights_sha256=card.weights_sha256,
            preprocessing_version=card.preprocess_spec.version,
            input_size=card.preprocess_spec.input_size,
            synthetic_demo=card.synthetic_demo,
            calibration_temperature=card.calibration_temperature,
            low_confidence_below=card.low_confidence_below,
            code_version=card.code_version,
            scope_gate={
                "version": scope.get("version"),
                "feature_gate": bool(scope.get("feature_gate")),
                "layout_gate": bool(scope.get("layout_gate")),
            },
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelOutput:
    """One image's answer: calibrated probabilities in ``model.labels`` order."""

    probabilities: list[float]
    positives: list[str]  # labels called positive: the top label (multiclass) or those over threshold
    low_confidence: bool
    model: ModelInfo
    batch_size: int  # images in the forward pass that produced it
    scope_measures: dict = field(default_factory=dict)

    def by_label(self) -> dict[str, float]:
        return dict(zip(self.model.labels, self.probabilities))


@dataclass(frozen=True)
class Explanation:
    heatmap: np.ndarray  # [H, W] in [0, 1] at the model's input size
    label: str  # the label the heatmap explains


class InputSizeMismatch(ValueError):
    """The grey levels were sized for another model version: a roll happened in between."""

    def __init__(self, input_size: int):
        super().__init__(input_size)
        self.input_size = input_size

    def __str__(self) -> str:
        return f"the model now takes {self.input_size} px inputs"


class OutOfScope(ValueError):
    """Refused by the checkpoint's feature gate: no probabilities leave the replica, so no label is shown."""

    def __init__(self, reason: str, measures: dict | None = None):
        super().__init__(reason, measures)
        self.reason, self.measures = reason, measures or {}

    @property
    def verdict(self) -> ScopeVerdict:
        return ScopeVerdict(False, self.reason, self.measures)

    def __str__(self) -> str:
        return self.verdict.message or self.reason
