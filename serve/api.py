"""The JSON API (``/api/v1``) and the health probes: each route declared beside its handler.

Errors are typed (``serve.errors``) and rendered by the Ingress as ``{"error": {"code",
"message", "field"}}`` with their status; nothing is stored for a refused request.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve.authentication import identity_of
from serve.errors import InputError, NotFound, ServiceError, error_response
from serve.images import image_response
from serve.inputs import validate_page, validate_patient_id
from serve.prediction import public_record
from serve.predictions import PredictionService
from serve.records import IMAGE_KINDS
from serve.routes import RouteOwner, route
from serve.uploads import read_upload

OPENAPI = yaml.safe_load(Path(__file__).with_name("openapi.yaml").read_text())
READY_CHECKS = ("model", "database")


class Api(RouteOwner):
    def __init__(self, predictions: PredictionService, store: DeploymentHandle):
        self.predictions, self.store = predictions, store
        self.settings = predictions.settings

    async def error_response(self, request: Request, error: ServiceError) -> Response:
        return error_response(error)

    @route("/api/v1/predictions", "POST")
    async def create_prediction(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            upload = await read_upload(request, self.settings.max_upload_bytes)
        except InputError as exc:  # the body itself was refused
            self.predictions.reject(exc)
            raise
        checked = self.predictions.check(upload)
        prediction = await self.predictions.predict_within_deadline(checked, started)
        body = prediction.api_body()
        if checked.save:
            saved = await self.predictions.save(prediction, identity_of(request))
            body["saved"], body["prediction_id"] = saved.saved, saved.prediction_id
            if not saved.saved:
                body["save_error"] = saved.reason
        body["timings_ms"] = {**prediction.timings_ms, "total": round((time.perf_counter() - started) * 1000, 2)}
        return JSONResponse(body)

    @route("/api/v1/predictions/{prediction_id}")
    async def get_prediction(self, request: Request) -> Response:
        record = await self.store.get.remote(request.path_params["prediction_id"], identity_of(request))
        if record is None:
            raise NotFound("no such prediction")
        return JSONResponse(public_record(record))

    @route("/api/v1/predictions/{prediction_id}/image")
    async def get_image(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "original")
        if kind not in IMAGE_KINDS:
            raise InputError(400, "bad_kind", f"kind must be one of {IMAGE_KINDS}", "kind")
        data = await self.store.image.remote(request.path_params["prediction_id"], kind, identity_of(request))
        if data is None:
            raise NotFound("no such image")
        return image_response(data, self.settings.image_cache_s)

    @route("/api/v1/patients/{patient_id}/predictions")
    async def patient_predictions(self, request: Request) -> Response:
        patient_id = validate_patient_id(request.path_params["patient_id"])
        page, page_size = validate_page(request.query_params.get("page"), request.query_params.get("page_size"))
        records, total = await self.store.by_patient.remote(patient_id, page, page_size, identity_of(request))
        return JSONResponse(
            {
                "patient_id": patient_id,
                "page": page,
                "page_size": page_size,
                "total": total,
                "items": [public_record(r) for r in records],
            }
        )

    @route("/api/v1/model")
    async def model(self, request: Request) -> Response:
        return JSONResponse((await self.predictions.card(refresh=True)).to_dict())

    @route("/api/v1/openapi.json", public=True)
    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    @route("/healthz", public=True)
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @route("/readyz", public=True)
    async def readyz(self, request: Request) -> Response:
        """Model loaded and database reachable; ``?checks=model`` limits it (pod readiness: a
        MongoDB outage must not take predictions down, since they still work, marked not saved)."""
        wanted = request.query_params.get("checks", ",".join(READY_CHECKS)).split(",")
        if not wanted or set(wanted) - set(READY_CHECKS):
            raise InputError(400, "bad_checks", "checks is a comma list of: model, database", "checks")
        checks = dict.fromkeys(wanted, False)
        if "model" in checks:
            try:
                checks["model"] = bool((await self.predictions.card(refresh=True)).weights_sha256)
            except Exception:
                pass
        if "database" in checks:
            try:
                checks["database"] = bool(await self.store.ping.remote())
            except Exception:
                pass
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)
