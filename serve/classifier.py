"""``BatchedClassifier``: the GPU (or CPU) deployment that runs the model.

It receives decoded grey levels at the model's input size (decoding and
validation happen in the ingress, so one bad upload never fails a batch),
stacks them, normalises, and runs one forward pass per ``@serve.batch``.
``user_config`` rolls a new checkpoint in without restarting the app and tunes
batch size and wait time at runtime. Every image it runs also goes into the model version's drift
window (``cxr_model.drift``), exported as PSI gauges against the model card's reference.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from cxr_model.classifier import low_confidence, positive_labels
from cxr_model.drift import DriftReferenceError, DriftWindow
from cxr_model.engine import Engine, check_runtime, load_engine, stack_levels
from cxr_model.gradcam import gradcam
from serve.metrics import ClassifierMetrics, DriftMetrics
from serve.model_results import Explanation, InputSizeMismatch, ModelInfo, ModelOutput, OutOfScope

logger = logging.getLogger("ray.serve")

# PSI over the window at most this often: Ray exports every few seconds, so more would be wasted CPU.
DRIFT_REFRESH_S = 1.0


class ExpectedRefusals(logging.Filter):
    """Serve logs every exception a replica method raises as an ERROR with its traceback. A refusal
    is an answer, not a failure: it is counted in the metrics and answered 422/503 by the Ingress."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (OutOfScope, InputSizeMismatch))


@dataclass(frozen=True)
class ServedModel:
    """Everything one model version needs, swapped in by a single assignment on a roll."""

    engine: Engine  # checkpoint, runtime, gates: shared with archive scoring (cxr_model.engine)
    info: ModelInfo
    drift: DriftWindow  # this version's own: a roll starts an empty window against the new card's reference

    @property
    def card(self):
        return self.engine.card


class ClassifierConfig(BaseModel):
    """The deployment's ``user_config``: applied at start and on every change, without a restart."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None  # a model roll: wins over the constructor's checkpoint (see serve.settings)
    max_batch_size: int = Field(default=4, ge=1)
    batch_wait_timeout_s: float = Field(default=0.02, ge=0)


BATCH_DEFAULTS = ClassifierConfig()


@serve.deployment(name="BatchedClassifier")
class BatchedClassifier:
    def __init__(
        self,
        checkpoint: str,
        device: str = "auto",
        runtime: str = "auto",
        compile: bool = False,
        precision: str = "fp32",
        *,
        drift_window: int,
        drift_min_window: int,
    ):
        check_runtime(runtime, precision)
        self.device, self.runtime, self.compile, self.precision = device, runtime, compile, precision
        # Ray pins OMP threads to the replica's CPUs; torch and ONNX Runtime must agree or they oversubscribe.
        self.threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        torch.set_num_threads(self.threads)
        self.metrics = ClassifierMetrics()
        self.drift_sizes, self.drift_metrics = (drift_window, drift_min_window), DriftMetrics()
        self._drift_shown, self._drift_failed = 0.0, False
        logging.getLogger("ray.serve").addFilter(ExpectedRefusals())
        self.served = self._load(checkpoint)
        self._mark_loaded(self.served.card)
        self._drift(self.served)

    def _load(self, checkpoint: str) -> ServedModel:
        engine = load_engine(checkpoint, self.device, self.runtime, self.precision, self.threads, self.compile)
        info = ModelInfo.from_card(engine.card, engine.runtime, engine.precision)
        return ServedModel(engine, info, self._drift_window(engine.card))

    def _drift_window(self, card) -> DriftWindow:
        """The window for one model version; said once per load when it will report no PSI."""
        reference = card.drift_reference or None
        try:
            window = DriftWindow(reference, card.labels, *self.drift_sizes)
        except DriftReferenceError as error:
            logger.warning("model %s %s: %s; no drift PSI is exported", card.name, card.version, error)
            return DriftWindow(None, card.labels, *self.drift_sizes)
        if reference is None:
            logger.info(
                "model %s %s has no drift reference in its card (trained before drift monitoring): no drift PSI "
                "is exported, only the window size; retrain to get one",
                card.name,
                card.version,
            )
        return window

    def _drift(self, served: ServedModel, probs: np.ndarray | None = None, verdicts=None) -> None:
        """Record a batch (if given) and refresh the gauges. Drift is monitoring: it never fails a prediction
        or a health check, and a failure is logged once per replica."""
        try:
            if probs is not None:
                served.drift.add_verdicts(probs, verdicts)
                if time.monotonic() - self._drift_shown < DRIFT_REFRESH_S:
                    return
            self._drift_shown = time.monotonic()
            self.drift_metrics.show(served.card.version, len(served.drift), served.drift.psi())
        except Exception:
            if not self._drift_failed:
                self._drift_failed = True
                logger.exception("drift monitoring failed (predictions are unaffected)")

    def _mark_loaded(self, card, loaded: int = 1) -> None:
        self.metrics.model_loaded.set(loaded, tags={"model": card.name, "version": card.version})

    def reconfigure(self, user_config: dict) -> None:
        config = ClassifierConfig.model_validate(user_config)  # unknown keys are errors, not silently ignored
        if config.checkpoint and config.checkpoint != self.served.engine.checkpoint:
            old = self.served.card
            # One assignment: a batch sees the old model or the new one, never half of each.
            self.served = self._load(config.checkpoint)
            self.metrics.rolls.inc()
            self._mark_loaded(old, 0)
            self._mark_loaded(self.served.card)
            self._drift(self.served)  # the old version's drift series lapse: Ray drops gauges no longer set
        self._predict_batch.set_max_batch_size(config.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    def model_card(self) -> dict:
        return self.served.card.to_dict()

    async def predict(self, gray: np.ndarray) -> ModelOutput:
        """Grey levels [1, S, S] (``serve.inputs.model_levels``: uint8, or float32 in [0, 1]) -> the
        model's answer; raises ``InputSizeMismatch`` or ``OutOfScope``."""
        result = await self._predict_batch(gray)
        if isinstance(result, Exception):  # per image, so one refusal never fails its batch-mates
            raise result
        return result

    @serve.batch(max_batch_size=BATCH_DEFAULTS.max_batch_size, batch_wait_timeout_s=BATCH_DEFAULTS.batch_wait_timeout_s)
    async def _predict_batch(self, grays: list[np.ndarray]) -> list[ModelOutput | Exception]:
        served = self.served  # the model for this whole batch, even if a roll lands meanwhile
        size = served.card.preprocess_spec.input_size
        results: list[ModelOutput | Exception] = [InputSizeMismatch(size) for _ in grays]
        good = [i for i, g in enumerate(grays) if tuple(g.shape) == (1, size, size)]
        if not good:
            return results
        started = time.perf_counter()
        # Off the event loop, so requests keep queueing for the next batch meanwhile.
        probs, verdicts, rechecked = await asyncio.to_thread(served.engine.forward, [grays[i] for i in good])
        if rechecked:
            self.metrics.gate_rechecks.inc(rechecked)
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_sizes.observe(len(good))
        self._drift(served, probs, verdicts)
        positives = positive_labels(probs, served.card)
        for row, verdict, called, i in zip(probs, verdicts, positives, good):
            if verdict is not None and not verdict.in_scope:
                results[i] = OutOfScope(verdict.reason, verdict.measures)
                continue
            results[i] = ModelOutput(
                [float(p) for p in row],
                called,
                low_confidence(row, served.card),
                served.info,
                len(good),
                (verdict.measures or {}) if verdict is not None else {},
            )
        return results

    async def explain(self, gray: np.ndarray, target: int | None = None) -> Explanation:
        """Grad-CAM heatmap for one image; its own call, so plain predictions never pay for it."""
        classifier = self.served.engine.explainer
        size = classifier.card.preprocess_spec.input_size
        if tuple(gray.shape) != (1, size, size):
            raise InputSizeMismatch(size)
        x = stack_levels([gray], classifier.card.preprocess_spec)[0].to(classifier.device)
        heatmap, index = await asyncio.to_thread(gradcam, classifier.model, x, target)
        return Explanation(heatmap, classifier.labels[index])

    def check_health(self) -> None:
        if self.served is None or self.served.engine.runner is None:
            raise RuntimeError("no model loaded")
        # Re-set every health check (10 s): Ray stops exporting a gauge that is never updated again.
        self._mark_loaded(self.served.card)
        self._drift(self.served)
