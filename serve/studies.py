"""One study's path through the service, shared by the JSON API and the pages.

Read the upload (size-checked before parsing) -> check every field -> decode ->
classify (batched) -> optional Grad-CAM -> optional save. The API reports the
first problem; the pages show every field's problem next to that field.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.requests import Request

from cxr_model.annotate import DEMO_NOTICE, NOTICE, annotate, to_png
from cxr_model.checkpoint import ModelCard
from cxr_model.dicom import zero_preamble
from cxr_model.gradcam import overlay_heatmap
from cxr_model.labels import MULTICLASS
from cxr_model.scope import ImageLimits, ScopeVerdict, check_image
from serve.access import Identity
from serve.inputs import (
    InputError, decode_upload, dicom_patient_id, model_levels, validate_patient_id, validate_request_id,
)
from serve.settings import ServeSettings
from serve.store import now
from ui.views import percent

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
MAX_FORM_FIELDS = 8
MAX_FIELD_BYTES = 64 * 1024


class InvalidStudy(ValueError):
    """Every field's problem at once; ``first`` is what the JSON API reports."""

    def __init__(self, errors: list[InputError]):
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors

    @property
    def first(self) -> InputError:
        return self.errors[0]

    def triples(self) -> list[tuple[str | None, str, str]]:
        return [(e.field, e.code, str(e)) for e in self.errors]


@dataclass
class Upload:
    fields: dict[str, str]
    data: bytes | None
    filename: str | None


class BodyTooLarge(Exception):
    pass


async def read_upload(request: Request, max_bytes: int, image_required: bool = True) -> Upload:
    """Multipart form -> fields and at most one image, refusing oversized bodies before parsing."""
    limit = max_bytes + MAX_FIELD_BYTES * MAX_FORM_FIELDS  # the image and its few small fields
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(413, "too_large", f"the upload exceeds {max_bytes} bytes", "image")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InputError(415, "not_multipart", "send multipart/form-data with an 'image' file")
    # A chunked body declares no length: count what arrives and stop reading past the limit, so the
    # parser never spools more than that to disk.
    received = 0

    async def bounded_receive():
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise BodyTooLarge
        return message

    try:
        form = await Request(request.scope, bounded_receive).form(
            max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except BodyTooLarge:
        raise InputError(413, "too_large", f"the upload exceeds {max_bytes} bytes", "image") from None
    except Exception as exc:  # starlette raises MultiPartException / HTTPException on limits
        raise InputError(400, "bad_form", f"the form could not be parsed: {exc}") from exc
    try:
        upload = form.get("image")
        data = filename = None
        if upload is not None and not isinstance(upload, str):
            data = await upload.read(max_bytes + 1)
            filename = upload.filename
            if len(data) > max_bytes:
                raise InputError(413, "too_large", f"the image exceeds {max_bytes} bytes", "image")
            if not data and not filename:  # a browser's empty file input
                data = None
        if data is None and image_required:
            raise InputError(400, "missing_image", "an 'image' file is required", "image")
        return Upload({k: v for k, v in form.items() if isinstance(v, str)}, data, filename)
    finally:
        await form.close()


@dataclass
class StudyInputs:
    patient_id: str
    request_id: str
    explain: bool
    save: bool
    data: bytes
    original: Image.Image
    filename: str | None = None


def flag(value) -> bool:
    return str(value).lower() in ("1", "true", "on", "yes")


def check_inputs(fields: dict, data: bytes | None, max_pixels: int, filename: str | None = None) -> StudyInputs:
    """All of a study's fields, validated; ``InvalidStudy`` lists every problem (patient ID first)."""
    errors, values = [], {}
    form_patient = (fields.get("patient_id") or "").strip()
    checks = [("patient_id", lambda: validate_patient_id(form_patient or dicom_patient_id(data))),
              ("request_id", lambda: validate_request_id(fields.get("request_id")) or uuid.uuid4().hex),
              ("explain", lambda: _explain(fields.get("explain", ""))),
              ("image", lambda: _decode(data, max_pixels))]
    for name, check in checks:
        try:
            values[name] = check()
        except InputError as exc:
            errors.append(exc)
    if errors:
        raise InvalidStudy(errors)
    return StudyInputs(values["patient_id"], values["request_id"], values["explain"], flag(fields.get("save", "")),
                       data, values["image"], filename)


def _explain(value: str) -> bool:
    if value not in ("", "gradcam"):
        raise InputError(400, "bad_explain", "explain must be 'gradcam' or empty", "explain")
    return value == "gradcam"


def _decode(data: bytes | None, max_pixels: int) -> Image.Image:
    if data is None:
        raise InputError(400, "missing_image", "an 'image' file is required", "image")
    return decode_upload(data, max_pixels)


@dataclass
class Prediction:
    inputs: StudyInputs
    probabilities: dict[str, float]
    top_label: str
    positives: list[str]
    model: dict
    batch_size: int
    low_confidence: bool = False
    timings_ms: dict = field(default_factory=dict)
    heatmap: np.ndarray | None = None
    gradcam_label: str | None = None

    @property
    def confidence(self) -> float:
        return self.probabilities[self.top_label]

    @property
    def caption(self) -> str:
        # The same rounding as the page's bars: 99.9% must not be burnt into the image as 100%.
        return f"{self.top_label} {percent(self.confidence)}"

    def annotated(self, image: Image.Image | None = None) -> Image.Image:
        notice = DEMO_NOTICE if self.model.get("synthetic_demo") else NOTICE
        return annotate(image or self.inputs.original, self.caption, notice)

    def gradcam(self, image: Image.Image | None = None) -> Image.Image | None:
        return None if self.heatmap is None else overlay_heatmap(image or self.inputs.original, self.heatmap)

    def record(self) -> dict:
        return {"request_id": self.inputs.request_id, "patient_id": self.inputs.patient_id,
                "probabilities": self.probabilities, "top_label": self.top_label, "confidence": self.confidence,
                "positives": self.positives, "low_confidence": self.low_confidence, "model": self.model,
                "created_at": now()}

    def stored_images(self) -> dict[str, bytes]:
        # Drawn and encoded only when stored: PNG encoding is the costliest CPU work after the
        # model, and plain predictions should not pay for it.
        images = {"original": zero_preamble(self.inputs.data), "annotated": to_png(self.annotated())}
        if self.heatmap is not None:
            images["gradcam"] = to_png(self.gradcam())
        return images

    def api_body(self) -> dict:
        body = {"request_id": self.inputs.request_id, "patient_id": self.inputs.patient_id,
                "probabilities": self.probabilities, "top_label": self.top_label, "confidence": self.confidence,
                "positives": self.positives, "low_confidence": self.low_confidence, "model": self.model,
                "batch_size": self.batch_size, "saved": False, "prediction_id": None}
        if self.gradcam_label is not None:
            body["gradcam_label"] = self.gradcam_label
        return body


def public_record(record: dict) -> dict:
    """A stored record as the API shows it: ids as strings, dates as ISO 8601."""
    out = {k: v for k, v in record.items() if k not in ("_id", "files")}
    out["prediction_id"] = record["_id"]
    out["created_at"] = record["created_at"].isoformat()
    out["images"] = {kind: f"/api/v1/predictions/{record['_id']}/image?kind={kind}" for kind in record["files"]}
    return out


class Unavailable(RuntimeError):
    """The service cannot answer this request now; the client should retry after ``retry_after`` s."""

    def __init__(self, status: int, code: str, message: str, retry_after: int):
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after


def image_response(data: bytes):
    """A stored image as an HTTP response, typed by its magic bytes (stored originals may be DICOM)."""
    from starlette.responses import Response

    from cxr_model.preprocessing import sniff_format

    media = {"jpeg": "image/jpeg", "dicom": "application/dicom"}.get(sniff_format(data), "image/png")
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


class ModelChanging(Unavailable):
    """A roll replaced the model between two calls; the client should retry shortly."""

    def __init__(self, detail: str = ""):
        super().__init__(503, "model_changing", "the model is being replaced; retry in a moment", 2)


# A replica that died (killed, OOM, node lost) while holding our call. Predictions are pure
# functions of the upload, so they are retried until the deadline; saves never are (see save).
REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError)
RETRY_PAUSE_S = 0.5


class StudyService:
    def __init__(self, classifier: DeploymentHandle, store: DeploymentHandle, settings: ServeSettings):
        self.classifier, self.store, self.settings = classifier, store, settings
        self._card: ModelCard | None = None
        self.rejected = Counter("cxr_rejected_inputs_total", description="uploads refused, by reason",
                                tag_keys=("reason",))
        self.predictions = Counter("cxr_predictions_total", description="predictions served, by top label",
                                   tag_keys=("label", "model_version"))
        self.retries = Counter("cxr_prediction_retries_total", description="predictions retried after a replica "
                               "died under them", tag_keys=("reason",))
        self.overloaded = Counter("cxr_unavailable_total", description="predictions answered 503/504 (queue full "
                                  "or timeout)", tag_keys=("reason",))
        self.out_of_scope = Counter("cxr_out_of_scope_total", description="uploads refused as not a chest "
                                    "radiograph, by reason", tag_keys=("reason",))
        self.stage_seconds = Histogram("cxr_stage_seconds", description="time per request stage",
                                       boundaries=LATENCY_BUCKETS, tag_keys=("stage",))

    async def card(self, refresh: bool = False) -> ModelCard:
        if self._card is None or refresh:
            self._card = ModelCard.from_dict(await self.classifier.model_card.remote())
        return self._card

    def check(self, upload: Upload) -> StudyInputs:
        try:
            return check_inputs(upload.fields, upload.data, self.settings.max_pixels, upload.filename)
        except InvalidStudy as exc:
            self.reject(exc.first)
            raise

    def reject(self, error: InputError) -> None:
        self.rejected.inc(tags={"reason": error.code})

    def refuse_out_of_scope(self, verdict: ScopeVerdict) -> InvalidStudy:
        self.out_of_scope.inc(tags={"reason": verdict.reason})
        error = InputError(422, "out_of_scope", verdict.message, "image",
                           {"reason": verdict.reason, "measures": verdict.measures or {}})
        self.reject(error)
        return InvalidStudy([error])

    async def predict(self, inputs: StudyInputs, started: float | None = None) -> Prediction:
        """Classify one checked study; ``InvalidStudy`` (422 out_of_scope) when it is no chest radiograph."""
        started = time.perf_counter() if started is None else started
        card = await self.card()
        gray = model_levels(inputs.original, card.preprocess_spec)
        verdict = check_image(inputs.original, gray, ImageLimits.from_dict((card.scope or {}).get("image_limits")))
        decoded = time.perf_counter()
        self.stage_seconds.observe(decoded - started, tags={"stage": "decode"})
        if not verdict.in_scope:  # refused before the model runs
            raise self.refuse_out_of_scope(verdict)
        result = await self.classifier.predict.remote(gray)
        if result.get("error") == "input_size_mismatch":  # a model roll changed the input size
            gray = model_levels(inputs.original, (await self.card(refresh=True)).preprocess_spec)
            result = await self.classifier.predict.remote(gray)
        if "error" in result:
            raise ModelChanging(result["error"])
        if "out_of_scope" in result:  # refused by the checkpoint's feature gate
            raise self.refuse_out_of_scope(ScopeVerdict(False, result["out_of_scope"]["reason"],
                                                        result["out_of_scope"]["measures"]))
        inferred = time.perf_counter()
        self.stage_seconds.observe(inferred - decoded, tags={"stage": "inference"})
        model = result["model"]
        probabilities = dict(zip(model["labels"], result["probabilities"]))
        top_label = max(probabilities, key=probabilities.get)
        if model["task"] == MULTICLASS:
            positives = [top_label]
        else:
            positives = [n for n, t in zip(model["labels"], model["thresholds"]) if probabilities[n] >= t]
        self.predictions.inc(tags={"label": top_label, "model_version": model["version"]})
        prediction = Prediction(inputs, probabilities, top_label, positives, model, result["batch_size"],
                                bool(result.get("low_confidence", False)), {"decode": round((decoded - started) * 1000, 2),
                                 "inference": round((inferred - decoded) * 1000, 2)})
        if inputs.explain:
            cam = await self.classifier.explain.remote(gray)
            if "heatmap" in cam:
                prediction.heatmap, prediction.gradcam_label = cam["heatmap"], cam["label"]
        return prediction

    async def predict_within_deadline(self, inputs: StudyInputs, started: float) -> Prediction:
        """``predict`` bounded by the request timeout, retried when a replica dies under it;
        overload and timeouts become ``Unavailable`` (503/504 with Retry-After), never a hang."""
        deadline = started + self.settings.request_timeout_s
        try:
            while True:
                try:
                    return await asyncio.wait_for(self.predict(inputs, started), max(0.01, deadline - time.perf_counter()))
                except REPLICA_GONE:
                    self.retries.inc(tags={"reason": "replica_gone"})
                    if time.perf_counter() + RETRY_PAUSE_S >= deadline:
                        raise
                    await asyncio.sleep(RETRY_PAUSE_S)
        except BackPressureError as exc:
            self.overloaded.inc(tags={"reason": "classifier_queue_full"})
            raise Unavailable(503, "overloaded", "the service is at capacity; retry shortly", 2) from exc
        except (asyncio.TimeoutError, *REPLICA_GONE) as exc:
            self.overloaded.inc(tags={"reason": "timeout"})
            raise Unavailable(504, "timeout", f"no prediction within {self.settings.request_timeout_s:g} s; "
                                              "retry shortly", 5) from exc

    async def save(self, prediction: Prediction, actor: Identity) -> dict:
        started = time.perf_counter()
        record = prediction.record() | {"created_by": actor.name}
        saved = await self.store.save.remote(record, prediction.stored_images(), actor)
        self.stage_seconds.observe(time.perf_counter() - started, tags={"stage": "storage"})
        return saved
