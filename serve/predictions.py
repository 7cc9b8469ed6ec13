"""``PredictionService``: one prediction's path through the service, shared by the API and the pages.

Checked request -> image checks (the out-of-scope gate's first half) -> the batched classifier ->
optional Grad-CAM -> optional save. Refusals are typed errors (``serve.errors``); overload and
timeouts become ``Unavailable`` (503/504 with Retry-After), never a hang.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from cxr_model.checkpoint import ModelCard
from cxr_model.scope import ImageLimits, ScopeVerdict, check_image
from serve.errors import InputError, InvalidRequest, ServiceError, Unavailable
from serve.identity import Identity
from serve.images import ViewCache, render_view, stored_images
from serve.inputs import NotAnalysed, PredictionRequest, check_request, model_levels
from serve.metrics import IngressMetrics
from serve.model_results import InputSizeMismatch, OutOfScope
from serve.prediction import Prediction, not_analysed_record
from serve.records import SaveResult
from serve.retry import REPLICA_GONE, within_deadline
from serve.settings import ServeSettings
from serve.uploads import Upload


def refuse_conflict(saved: SaveResult) -> None:
    """409 for a save that names an earlier one of something else (nothing was stored)."""
    if saved.key_reused:
        raise ServiceError(409, "idempotency_key_reused", saved.reason, "request_id")
    if saved.instance_conflict:
        raise ServiceError(409, "sop_instance_conflict", saved.reason, "image")


class PredictionService:
    def __init__(self, classifier: DeploymentHandle, store: DeploymentHandle, settings: ServeSettings):
        self.classifier, self.store, self.settings = classifier, store, settings
        self._card: ModelCard | None = None
        self.metrics = IngressMetrics()
        self.workers = ThreadPoolExecutor(settings.ingress_threads, thread_name_prefix="ingress-cpu")
        self.views = ViewCache(settings.view_cache_bytes)

    async def card(self, refresh: bool = False) -> ModelCard:
        if self._card is None or refresh:
            self._card = ModelCard.from_dict(await self.classifier.model_card.remote())
        return self._card

    async def off_loop(self, function, *args):
        """CPU work (decoding, resizing, drawing, encoding) on the Ingress's worker threads, so the
        event loop keeps answering other requests, health probes among them, meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.workers, function, *args)

    async def check(self, upload: Upload) -> PredictionRequest:
        try:
            return await self.off_loop(
                check_request, upload.fields, upload.data, self.settings.max_pixels, upload.filename
            )
        except InvalidRequest as exc:
            self.reject(exc.errors[0])
            raise

    def reject(self, error: InputError) -> None:
        self.metrics.rejected.inc(tags={"reason": error.code})

    def _out_of_scope(self, verdict: ScopeVerdict, request: PredictionRequest) -> InvalidRequest:
        self.metrics.out_of_scope.inc(tags={"reason": verdict.reason})
        error = InputError(
            422,
            "out_of_scope",
            verdict.message,
            "image",
            {"reason": verdict.reason, "measures": verdict.measures or {}},
        )
        self.reject(error)
        if NotAnalysed.applies([error], request.dicom):
            return NotAnalysed([error], request)
        return InvalidRequest([error])

    async def _levels(self, request: PredictionRequest, refresh: bool = False):
        return await self.off_loop(model_levels, request.original, (await self.card(refresh)).preprocess_spec)

    async def predict(self, request: PredictionRequest, started: float | None = None) -> Prediction:
        """Classify one checked request; ``InvalidRequest`` (422 out_of_scope) when it is no chest radiograph."""
        started = time.perf_counter() if started is None else started
        card = await self.card()
        gray = await self._levels(request)
        limits = ImageLimits.from_dict((card.scope or {}).get("image_limits"))
        verdict = await self.off_loop(check_image, request.original, gray, limits)
        decoded = time.perf_counter()
        self.metrics.stage_seconds.observe(decoded - started, tags={"stage": "decode"})
        if not verdict.in_scope:  # refused before the model runs
            raise self._out_of_scope(verdict, request)
        try:
            try:
                output = await self.classifier.predict.remote(gray)
            except InputSizeMismatch:  # a model roll changed the input size: once more at the new size
                gray = await self._levels(request, refresh=True)
                output = await self.classifier.predict.remote(gray)
        except InputSizeMismatch as exc:
            raise Unavailable(
                503,
                "model_changing",
                "the model is being replaced; retry in a moment",
                self.settings.retry_after_model_changing_s,
            ) from exc
        except OutOfScope as exc:  # refused by the checkpoint's feature gate
            raise self._out_of_scope(exc.verdict, request) from None
        inferred = time.perf_counter()
        self.metrics.stage_seconds.observe(inferred - decoded, tags={"stage": "inference"})
        prediction = Prediction(
            request,
            output,
            {"decode": round((decoded - started) * 1000, 2), "inference": round((inferred - decoded) * 1000, 2)},
        )
        self.metrics.predictions.inc(tags={"label": prediction.top_label, "model_version": output.model.version})
        if request.explain:
            try:
                explanation = await self.classifier.explain.remote(gray)
                prediction.heatmap, prediction.gradcam_label = explanation.heatmap, explanation.label
            except InputSizeMismatch:  # a roll landed between the two calls: the prediction stands alone
                pass
        return prediction

    async def predict_within_deadline(self, request: PredictionRequest, started: float) -> Prediction:
        """``predict`` bounded by the request timeout, retried when a replica dies under it."""
        deadline = started + self.settings.request_timeout_s
        try:
            return await within_deadline(
                lambda: self.predict(request, started),
                deadline,
                self.settings.retry_pause_s,
                lambda: self.metrics.retries.inc(tags={"reason": "replica_gone"}),
            )
        except BackPressureError as exc:
            self.metrics.unavailable.inc(tags={"reason": "classifier_queue_full"})
            raise Unavailable(
                503, "overloaded", "the service is at capacity; retry shortly", self.settings.retry_after_overloaded_s
            ) from exc
        except (asyncio.TimeoutError, *REPLICA_GONE) as exc:
            self.metrics.unavailable.inc(tags={"reason": "timeout"})
            raise Unavailable(
                504,
                "timeout",
                f"no prediction within {self.settings.request_timeout_s:g} s; retry shortly",
                self.settings.retry_after_timeout_s,
            ) from exc

    async def save(self, prediction: Prediction, actor: Identity, results_due: bool = False) -> SaveResult:
        """``results_due``: the service owes the PACS this record's results (a STOW-RS instance:
        no gateway holds it), which a gateway claims (``POST /api/v1/deliveries:claim``)."""
        started = time.perf_counter()
        images = await self.off_loop(stored_images, prediction)
        record = prediction.record(actor) | ({"results_due": True} if results_due else {})
        saved = await self.store.save.remote(record, images, actor)
        self.metrics.stage_seconds.observe(time.perf_counter() - started, tags={"stage": "storage"})
        return saved

    async def answer(self, upload: Upload, actor: Identity, started: float, results_due: bool = False) -> dict:
        """One upload through check, model and optional save -> the API's JSON body; typed errors raise."""
        try:
            checked = await self.check(upload)
            prediction = await self.predict_within_deadline(checked, started)
        except NotAnalysed as refusal:
            if refusal.request.save:
                await self._record_not_analysed(refusal, actor)
            raise
        body = prediction.api_body()
        if checked.save:
            saved = await self.save(prediction, actor, results_due)
            refuse_conflict(saved)
            body["saved"], body["prediction_id"] = saved.saved, saved.prediction_id
            if not saved.saved:
                body["save_error"] = saved.reason
        body["timings_ms"] = {**prediction.timings_ms, "total": round((time.perf_counter() - started) * 1000, 2)}
        return body

    async def _record_not_analysed(self, refusal: NotAnalysed, actor: Identity) -> None:
        """The refusal still answers 422; its body says whether, and as which record, it was kept."""
        saved = await self.save_not_analysed(refusal, actor)
        refuse_conflict(saved)
        refusal.details |= {"saved": saved.saved, "prediction_id": saved.prediction_id}
        if not saved.saved:
            refusal.details["save_error"] = saved.reason

    async def save_not_analysed(self, refusal: NotAnalysed, actor: Identity) -> SaveResult:
        """Record a DICOM instance the model does not read, with why; its file is kept as received."""
        record = not_analysed_record(refusal.request, refusal.errors[0], actor)
        return await self.store.save.remote(record, {"original": refusal.request.data}, actor)

    async def view(self, prediction_id: str, kind: str, actor: Identity) -> bytes | None:
        """A stored record's picture, drawn at most once per Ingress replica while it stays cached.
        Every fetch still goes through the store: its access check and audit entry come first."""
        cached = self.views.get((prediction_id, kind))
        source = await self.store.image.remote(prediction_id, kind, actor, cached is None)
        if source is None:
            return None
        if cached is not None:
            return cached
        data = await self.off_loop(render_view, source, self.settings.max_pixels)
        self.views.put((prediction_id, kind), data)
        return data
