"""The inference engine that serving and archive scoring share.

One checkpoint loaded with its runtime (eager torch or ONNX Runtime; CPU or
GPU; fp32 or int8) and its out-of-scope gates, and the one forward pass that
turns model-size grey levels into calibrated probabilities and gate verdicts.
``serve.classifier`` (one image per request, batched by Ray Serve) and
``scoring`` (whole archives on Ray Data) both call ``Engine.forward``, so an
image scores the same whichever way it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxr_model.checkpoint import ModelCard, load_network
from cxr_model.classifier import Classifier, resolve_device
from cxr_model.onnx_runtime import PRECISIONS, OnnxClassifier, onnx_export_matches
from cxr_model.preprocessing import PreprocessSpec, levels_to_unit, normalize
from cxr_model.quantize import recheck_rows
from cxr_model.scope import ImageLimits, ScopeGates, ScopeVerdict, load_scope

RUNTIMES = ("auto", "torch", "onnx")


def check_runtime(runtime: str, precision: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if precision not in PRECISIONS or (precision == "int8" and runtime == "torch"):
        raise ValueError(f"precision must be one of {PRECISIONS} (int8 only with the onnx runtime), not {precision!r}")


def stack_levels(levels: list[np.ndarray], spec: PreprocessSpec) -> torch.Tensor:
    """Per-image grey levels [1, S, S] (``resize_levels`` output) -> the normalised batch."""
    # Per image: one batch may mix uint8 (8-bit sources) and float32 (16-bit) levels.
    return normalize(torch.from_numpy(np.stack([levels_to_unit(g) for g in levels])), spec)


@dataclass(frozen=True)
class Engine:
    checkpoint: str
    runner: Classifier | OnnxClassifier  # predict_with_features, in the chosen runtime
    explainer: Classifier  # Grad-CAM needs autograd, so always the torch model
    runtime: str  # torch | onnx
    precision: str  # fp32 | bf16 | int8
    gates: ScopeGates | None  # the out-of-scope gate's fitted half, when the checkpoint has one
    limits: ImageLimits  # the image checks' bounds, from the card

    @property
    def card(self) -> ModelCard:
        return self.runner.card

    def forward(self, levels: list[np.ndarray]) -> tuple[np.ndarray, list[ScopeVerdict | None], int]:
        """Probabilities [N, C], a gate verdict per image (None without fitted gates), and how many
        images int8 re-ran in fp32 because they lay near the feature gate's threshold."""
        batch = stack_levels(levels, self.card.preprocess_spec)
        probs, features = self.runner.predict_with_features(batch)
        if self.gates is None:
            return probs, [None] * len(probs), 0
        # int8: images near the gate's threshold are answered from an fp32 run (cxr_model.quantize).
        rows = recheck_rows(self.gates.features, features, getattr(self.runner, "gate_recheck_band", 0.0))
        if len(rows):
            probs[rows], features[rows] = self.runner.predict_with_features(batch[torch.from_numpy(rows)], fp32=True)
        return probs, self.gates.verdicts(features, levels), len(rows)


def load_engine(
    checkpoint: str,
    device: str = "auto",
    runtime: str = "auto",
    precision: str = "fp32",
    threads: int = 1,
    compile: bool = False,
) -> Engine:
    """Load ``checkpoint`` for inference. ``runtime="auto"``: ONNX Runtime on CPU when the checkpoint
    has a verified export (measured faster there), torch on GPU (bf16, channels_last)."""
    check_runtime(runtime, precision)
    model, card = load_network(checkpoint)
    device_ = resolve_device(device)
    if runtime == "auto":
        exported = device_.type == "cpu" and onnx_export_matches(checkpoint, card)
        runtime = "onnx" if exported or precision == "int8" else "torch"
    explainer = Classifier(model, card, device=str(device_), channels_last=True, compile=compile and runtime == "torch")
    # int8 refuses to start without its verified export (OnnxClassifier says `cxr export --int8`).
    runner = OnnxClassifier(checkpoint, card, threads, precision) if runtime == "onnx" else explainer
    precision = precision if runtime == "onnx" else ("bf16" if device_.type == "cuda" else "fp32")
    limits, gates = load_scope(checkpoint, card)
    return Engine(str(checkpoint), runner, explainer, runtime, precision, gates, limits)
