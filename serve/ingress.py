"""``Ingress``: the Starlette app in front of the classifier and the store.

Uploads are size-checked before parsing, decoded and validated here (never in
the batch), then sent to ``BatchedClassifier`` as grey levels at the model's
input size. Errors are JSON ``{"error": {"code", "message", "field"}}`` with a
4xx status, and nothing is stored for a rejected request.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import yaml

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cxr_model.annotate import DEMO_NOTICE, NOTICE, annotate, to_png
from cxr_model.checkpoint import ModelCard
from cxr_model.gradcam import overlay_heatmap
from cxr_model.labels import MULTICLASS
from cxr_model.preprocessing import image_to_grayscale
from serve.inputs import InputError, decode_upload, validate_patient_id, validate_request_id
from serve.settings import ServeSettings
from serve.store import IMAGE_KINDS, now

OPENAPI = yaml.safe_load((Path(__file__).with_name("openapi.yaml")).read_text())
# path, handler method, HTTP methods; the OpenAPI test checks this table against openapi.yaml.
ROUTES = [
    ("/api/v1/predictions", "create_prediction", ["POST"]),
    ("/api/v1/predictions/{prediction_id}", "get_prediction", ["GET"]),
    ("/api/v1/predictions/{prediction_id}/image", "get_image", ["GET"]),
    ("/api/v1/patients/{patient_id}/predictions", "patient_predictions", ["GET"]),
    ("/api/v1/model", "model", ["GET"]),
    ("/api/v1/openapi.json", "openapi", ["GET"]),
    ("/healthz", "healthz", ["GET"]),
    ("/readyz", "readyz", ["GET"]),
]
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


def _error(exc: InputError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status)


def _flag(value) -> bool:
    return str(value).lower() in ("1", "true", "on", "yes")


def public_record(record: dict) -> dict:
    """A stored record as the API shows it: ids as strings, dates as ISO 8601."""
    out = {k: v for k, v in record.items() if k not in ("_id", "files")}
    out["prediction_id"] = record["_id"]
    out["created_at"] = record["created_at"].isoformat()
    out["images"] = {kind: f"/api/v1/predictions/{record['_id']}/image?kind={kind}" for kind in record["files"]}
    return out


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, classifier: DeploymentHandle, store: DeploymentHandle, settings: dict):
        self.classifier = classifier
        self.store = store
        self.settings = ServeSettings(**settings)
        self.card: ModelCard | None = None
        self.rejected = Counter("cxr_rejected_inputs_total", description="uploads refused, by reason",
                                tag_keys=("reason",))
        self.predictions = Counter("cxr_predictions_total", description="predictions served, by top label",
                                   tag_keys=("label", "model_version"))
        self.stage_seconds = Histogram("cxr_stage_seconds", description="time per request stage",
                                       boundaries=LATENCY_BUCKETS, tag_keys=("stage",))

    def __serve_build_asgi_app__(self) -> Starlette:
        return Starlette(routes=[Route(path, getattr(self, name), methods=methods) for path, name, methods in ROUTES])

    async def _card(self, refresh: bool = False) -> ModelCard:
        if self.card is None or refresh:
            self.card = ModelCard.from_dict(await self.classifier.model_card.remote())
        return self.card

    async def _read_upload(self, request: Request) -> tuple[dict, bytes]:
        limit = self.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise InputError(413, "too_large", f"the upload exceeds {limit} bytes", "image")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InputError(415, "not_multipart", "send multipart/form-data with an 'image' file")
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
        except Exception as exc:  # starlette raises MultiPartException / HTTPException on limits
            raise InputError(400, "bad_form", f"the form could not be parsed: {exc}") from exc
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise InputError(400, "missing_image", "an 'image' file is required", "image")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise InputError(413, "too_large", f"the image exceeds {limit} bytes", "image")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        await form.close()
        return fields, data

    async def create_prediction(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            fields, data = await self._read_upload(request)
            patient_id = validate_patient_id(fields.get("patient_id"))
            request_id = validate_request_id(fields.get("request_id")) or uuid.uuid4().hex
            explain = fields.get("explain", "")
            if explain not in ("", "gradcam"):
                raise InputError(400, "bad_explain", "explain must be 'gradcam' or empty", "explain")
            original = decode_upload(data, self.settings.max_pixels)
            # numpy crosses to the classifier as a zero-copy pickle-5 buffer; a tensor would be copied.
            gray = image_to_grayscale(original, (await self._card()).preprocess_spec).numpy()
        except InputError as exc:
            self.rejected.inc(tags={"reason": exc.code})
            return _error(exc)
        decoded = time.perf_counter()
        self.stage_seconds.observe(decoded - started, tags={"stage": "decode"})

        result = await self.classifier.predict.remote(gray)
        if result.get("error") == "input_size_mismatch":  # a model roll changed the input size
            gray = image_to_grayscale(original, (await self._card(refresh=True)).preprocess_spec).numpy()
            result = await self.classifier.predict.remote(gray)
        if "error" in result:
            return JSONResponse({"error": {"code": "model_changing",
                                           "message": "the model is being replaced; retry in a moment"}},
                                503, headers={"Retry-After": "2"})
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
        body = {
            "request_id": request_id, "patient_id": patient_id,
            "probabilities": probabilities, "top_label": top_label,
            "confidence": probabilities[top_label], "positives": positives,
            "model": model, "batch_size": result["batch_size"], "saved": False, "prediction_id": None,
        }
        cam = await self.classifier.explain.remote(gray) if explain else {}
        if "heatmap" in cam:
            body["gradcam_label"] = cam["label"]
        if _flag(fields.get("save", "")):
            # Images are drawn and encoded only when stored: PNG encoding is the costliest CPU
            # work after the model, and plain predictions should not pay for it.
            notice = DEMO_NOTICE if model["synthetic_demo"] else NOTICE
            images = {"original": data,
                      "annotated": to_png(annotate(original, f"{top_label} {probabilities[top_label]:.0%}", notice))}
            if "heatmap" in cam:
                images["gradcam"] = to_png(overlay_heatmap(original, cam["heatmap"]))
            record = {k: body[k] for k in ("request_id", "patient_id", "probabilities", "top_label",
                                           "confidence", "positives", "model")}
            record["created_at"] = now()
            saved = await self.store.save.remote(record, images)
            body["saved"], body["prediction_id"] = saved["saved"], saved["prediction_id"]
            if not saved["saved"]:
                body["save_error"] = saved["reason"]
            self.stage_seconds.observe(time.perf_counter() - inferred, tags={"stage": "storage"})
        body["timings_ms"] = {"decode": round((decoded - started) * 1000, 2),
                              "inference": round((inferred - decoded) * 1000, 2),
                              "total": round((time.perf_counter() - started) * 1000, 2)}
        return JSONResponse(body)

    async def get_prediction(self, request: Request) -> Response:
        record = await self.store.get.remote(request.path_params["prediction_id"])
        if record is None:
            return JSONResponse({"error": {"code": "not_found", "message": "no such prediction"}}, 404)
        return JSONResponse(public_record(record))

    async def get_image(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "original")
        if kind not in IMAGE_KINDS:
            return JSONResponse({"error": {"code": "bad_kind", "message": f"kind must be one of {IMAGE_KINDS}",
                                           "field": "kind"}}, 400)
        data = await self.store.image.remote(request.path_params["prediction_id"], kind)
        if data is None:
            return JSONResponse({"error": {"code": "not_found", "message": "no such image"}}, 404)
        media = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    async def patient_predictions(self, request: Request) -> Response:
        try:
            patient_id = validate_patient_id(request.path_params["patient_id"])
            page = int(request.query_params.get("page", "1"))
            page_size = int(request.query_params.get("page_size", "20"))
            if page < 1 or not 1 <= page_size <= 100:
                raise ValueError
        except InputError as exc:
            return _error(exc)
        except ValueError:
            return _error(InputError(400, "bad_page", "page >= 1 and 1 <= page_size <= 100", "page"))
        records, total = await self.store.by_patient.remote(patient_id, page, page_size)
        return JSONResponse({"patient_id": patient_id, "page": page, "page_size": page_size, "total": total,
                             "items": [public_record(r) for r in records]})

    async def model(self, request: Request) -> Response:
        return JSONResponse((await self._card(refresh=True)).to_dict())

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks = {"model": False, "database": False}
        try:
            checks["model"] = bool((await self._card(refresh=True)).weights_sha256)
        except Exception:
            pass
        try:
            checks["database"] = bool(await self.store.ping.remote())
        except Exception:
            pass
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)

