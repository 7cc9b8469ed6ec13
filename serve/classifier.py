"""``BatchedClassifier``: the GPU (or CPU) deployment that runs the model.

It receives decoded grey levels at the model's input size (decoding and
validation happen in the ingress, so one bad upload never fails a batch),
stacks them, normalises, and runs one forward pass per ``@serve.batch``.
``user_config`` rolls a new checkpoint in without restarting the app and tunes
batch size and wait time at runtime.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch
from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from cxr_model.checkpoint import load_network
from cxr_model.classifier import Classifier, low_confidence, resolve_device
from cxr_model.gradcam import gradcam
from cxr_model.onnx_runtime import OnnxClassifier, onnx_export_matches
from cxr_model.preprocessing import levels_to_unit, normalize
from cxr_model.scope import FeatureGate, load_scope

RUNTIMES = ("auto", "torch", "onnx")


class InputSizeMismatch(ValueError):
    """The tensor was preprocessed for another model version (a roll happened in between)."""


def model_info(card, runtime: str) -> dict:
    return {"runtime": runtime,
        "name": card.name, "version": card.version, "backbone": card.backbone, "task": card.task,
        "labels": list(card.labels), "thresholds": list(card.thresholds),
        "weights_sha256": card.weights_sha256, "preprocessing_version": card.preprocess_spec.version,
        "input_size": card.preprocess_spec.input_size, "synthetic_demo": card.synthetic_demo,
        "calibration_temperature": card.calibration_temperature, "low_confidence_below": card.low_confidence_below,
        "code_version": card.code_version,
        "scope_gate": {"version": (card.scope or {}).get("version"),
                       "feature_gate": bool((card.scope or {}).get("feature_gate"))},
    }


def stack_inputs(grays: list[np.ndarray], spec) -> torch.Tensor:
    """Per-request grey levels [1, S, S] (from ``serve.inputs.model_levels``) -> normalised batch."""
    # Per image: one batch may mix uint8 (8-bit sources) and float32 (16-bit) levels.
    return normalize(torch.from_numpy(np.stack([levels_to_unit(g) for g in grays])), spec)


@dataclass(frozen=True)
class ServedModel:
    """Everything one model version needs, swapped in by a single assignment on a roll."""

    checkpoint: str
    engine: object  # Classifier or OnnxClassifier: predict_batch + card
    explainer: Classifier  # Grad-CAM needs autograd, so always the torch model
    runtime: str
    gate: FeatureGate | None  # the out-of-scope feature gate, when the checkpoint has one

    @property
    def card(self):
        return self.engine.card


@serve.deployment(name="BatchedClassifier")
class BatchedClassifier:
    def __init__(self, checkpoint: str, device: str = "auto", runtime: str = "auto", compile: bool = False):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        self.device, self.runtime, self.compile = device, runtime, compile
        # Ray pins OMP threads to the replica's CPUs; torch and ONNX Runtime must agree or they oversubscribe.
        self.threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        torch.set_num_threads(self.threads)
        self.batch_sizes = Histogram("cxr_batch_size", description="images per model forward pass",
                                     boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.inference_seconds = Histogram("cxr_inference_seconds", description="model forward time per batch",
                                           boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10])
        self.model_loaded = Gauge("cxr_model_info", description="1 for the model version this replica serves",
                                  tag_keys=("model", "version"))
        self.rolls = Counter("cxr_model_rolls_total", description="checkpoints loaded via user_config")
        self.served = self._load(checkpoint)
        self.model_loaded.set(1, tags={"model": self.served.card.name, "version": self.served.card.version})

    def _load(self, checkpoint: str) -> ServedModel:
        model, card = load_network(checkpoint)
        device = resolve_device(self.device)
        runtime = self.runtime
        if runtime == "auto":
            # Measured on CPU: ONNX Runtime beats eager torch; on GPU torch (bf16, channels_last) wins.
            runtime = "onnx" if device.type == "cpu" and onnx_export_matches(checkpoint, card) else "torch"
        torch_classifier = Classifier(model, card, device=str(device), channels_last=True,
                                      compile=self.compile and runtime == "torch")
        engine = OnnxClassifier(checkpoint, card, self.threads) if runtime == "onnx" else torch_classifier
        _, gate = load_scope(checkpoint, card)
        return ServedModel(checkpoint, engine, torch_classifier, runtime, gate)

    def reconfigure(self, user_config: dict) -> None:
        unknown = set(user_config) - {"checkpoint", "max_batch_size", "batch_wait_timeout_s"}
        if unknown:
            raise ValueError(f"unknown BatchedClassifier user_config keys: {sorted(unknown)}")
        if user_config.get("checkpoint") and user_config["checkpoint"] != self.served.checkpoint:
            old = self.served.card
            # One assignment: a batch sees the old model or the new one, never half of each.
            self.served = self._load(user_config["checkpoint"])
            self.rolls.inc()
            self.model_loaded.set(0, tags={"model": old.name, "version": old.version})
            self.model_loaded.set(1, tags={"model": self.served.card.name, "version": self.served.card.version})
        if "max_batch_size" in user_config:
            self.predict.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self.predict.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    def model_card(self) -> dict:
        return self.served.card.to_dict()

    def _forward(self, served: ServedModel, grays: list[np.ndarray]) -> tuple[np.ndarray, list]:
        classifier = served.engine
        probs, features = classifier.predict_with_features(stack_inputs(grays, classifier.card.preprocess_spec))
        verdicts = served.gate.verdicts(features) if served.gate is not None else [None] * len(probs)
        return probs, verdicts

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict(self, grays: list[np.ndarray]) -> list[dict]:
        """Grey levels [1, S, S] per request (``resize_levels``: uint8, or float32 in [0, 1]) ->
        probabilities and model info."""
        served = self.served  # the model for this whole batch, even if a roll lands meanwhile
        classifier = served.engine
        size = classifier.card.preprocess_spec.input_size
        results: list[dict | None] = [None] * len(grays)
        good = [i for i, g in enumerate(grays) if tuple(g.shape) == (1, size, size)]
        for i in set(range(len(grays))) - set(good):
            results[i] = {"error": "input_size_mismatch", "input_size": size}
        if good:
            started = time.perf_counter()
            # Off the event loop, so requests keep queueing for the next batch meanwhile.
            probs, verdicts = await asyncio.to_thread(self._forward, served, [grays[i] for i in good])
            self.inference_seconds.observe(time.perf_counter() - started)
            self.batch_sizes.observe(len(good))
            info = model_info(classifier.card, served.runtime)
            for row, verdict, i in zip(probs, verdicts, good):
                if verdict is not None and not verdict.in_scope:
                    # No probabilities leave the replica for an out-of-scope image: no label can be shown.
                    results[i] = {"out_of_scope": verdict.to_dict(), "model": info, "batch_size": len(good)}
                    continue
                results[i] = {"probabilities": [float(p) for p in row], "low_confidence": low_confidence(row, classifier.card),
                              "model": info, "batch_size": len(good)}
                if verdict is not None:
                    results[i]["scope"] = verdict.measures
        return results

    async def explain(self, gray: np.ndarray, target: int | None = None) -> dict:
        """Grad-CAM heatmap for one image; its own call, so plain predictions never pay for it."""
        classifier = self.served.explainer
        size = classifier.card.preprocess_spec.input_size
        if tuple(gray.shape) != (1, size, size):
            return {"error": "input_size_mismatch", "input_size": size}
        x = stack_inputs([gray], classifier.card.preprocess_spec)[0].to(classifier.device)
        heatmap, index = await asyncio.to_thread(gradcam, classifier.model, x, target)
        return {"heatmap": heatmap, "target": index, "label": classifier.labels[index]}

    def check_health(self) -> None:
        if self.served is None or self.served.engine is None:
            raise RuntimeError("no model loaded")
        # Re-set every health check (10 s): Ray stops exporting a gauge that is never updated again.
        card = self.served.card
        self.model_loaded.set(1, tags={"model": card.name, "version": card.version})
