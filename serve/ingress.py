"""``Ingress``: the Starlette app in front of the classifier and the store.

Uploads are size-checked before parsing, decoded and validated here (never in
the batch), then sent to ``BatchedClassifier`` as grey levels at the model's
input size. Errors are JSON ``{"error": {"code", "message", "field"}}`` with a
4xx status, and nothing is stored for a rejected request.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from pymongo.errors import PyMongoError

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serve.auth import Access, Authentication, identity_of
from serve.inputs import InputError, validate_patient_id
from serve.pages import Pages
from serve.security import SecurityHeaders
from serve.settings import ServeSettings
from serve.store import IMAGE_KINDS
from serve.studies import InvalidStudy, StudyService, Unavailable, image_response, public_record, read_upload
from ui.views import STATIC_DIR

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


def _error(exc: InputError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status)


async def database_unavailable(request: Request, exc: Exception) -> Response:
    # Store reads raise through Ray as RayTaskError subclasses of the pymongo error.
    return JSONResponse({"error": {"code": "database_unavailable",
                                   "message": "the database cannot be reached; retry shortly"}},
                        503, headers={"Retry-After": "5"})


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, classifier: DeploymentHandle, store: DeploymentHandle, settings: dict):
        self.store = store
        self.settings = ServeSettings(**settings)
        self.studies = StudyService(classifier, store, self.settings)
        self.access = Access(self.settings, store)
        self.pages = Pages(self.studies, store, self.access)

    def __serve_build_asgi_app__(self) -> Starlette:
        api = [Route(path, getattr(self, name), methods=methods) for path, name, methods in ROUTES]
        return Starlette(routes=api + self.pages.routes() + [Mount("/static", StaticFiles(directory=STATIC_DIR))],
                         exception_handlers={PyMongoError: database_unavailable},
                         middleware=[Middleware(SecurityHeaders), Middleware(Authentication, access=self.access)])

    async def create_prediction(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            inputs = self.studies.check(await read_upload(request, self.settings.max_upload_bytes))
        except InputError as exc:  # the body itself was refused
            self.studies.reject(exc)
            return _error(exc)
        except InvalidStudy as exc:
            return _error(exc.first)
        try:
            prediction = await self.studies.predict_within_deadline(inputs, started)
        except InvalidStudy as exc:  # out of scope: not a chest radiograph
            return _error(exc.first)
        except Unavailable as exc:
            return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, exc.status,
                                headers={"Retry-After": str(exc.retry_after)})
        body = prediction.api_body()
        if inputs.save:
            saved = await self.studies.save(prediction, identity_of(request))
            body["saved"], body["prediction_id"] = saved["saved"], saved["prediction_id"]
            if not saved["saved"]:
                body["save_error"] = saved["reason"]
        body["timings_ms"] = {**prediction.timings_ms, "total": round((time.perf_counter() - started) * 1000, 2)}
        return JSONResponse(body)

    async def get_prediction(self, request: Request) -> Response:
        record = await self.store.get.remote(request.path_params["prediction_id"], identity_of(request))
        if record is None:
            return JSONResponse({"error": {"code": "not_found", "message": "no such prediction"}}, 404)
        return JSONResponse(public_record(record))

    async def get_image(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "original")
        if kind not in IMAGE_KINDS:
            return JSONResponse({"error": {"code": "bad_kind", "message": f"kind must be one of {IMAGE_KINDS}",
                                           "field": "kind"}}, 400)
        data = await self.store.image.remote(request.path_params["prediction_id"], kind, identity_of(request))
        if data is None:
            return JSONResponse({"error": {"code": "not_found", "message": "no such image"}}, 404)
        return image_response(data)

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
        records, total = await self.store.by_patient.remote(patient_id, page, page_size, identity_of(request))
        return JSONResponse({"patient_id": patient_id, "page": page, "page_size": page_size, "total": total,
                             "items": [public_record(r) for r in records]})

    async def model(self, request: Request) -> Response:
        return JSONResponse((await self.studies.card(refresh=True)).to_dict())

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Model loaded and database reachable; ``?checks=model`` limits it (pod readiness: a
        MongoDB outage must not take predictions down, since they still work, marked not saved)."""
        wanted = request.query_params.get("checks", "model,database").split(",")
        if not wanted or set(wanted) - {"model", "database"}:
            return _error(InputError(400, "bad_checks", "checks is a comma list of: model, database", "checks"))
        checks = dict.fromkeys(wanted, False)
        if "model" in checks:
            try:
                checks["model"] = bool((await self.studies.card(refresh=True)).weights_sha256)
            except Exception:
                pass
        if "database" in checks:
            try:
                checks["database"] = bool(await self.store.ping.remote())
            except Exception:
                pass
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)
