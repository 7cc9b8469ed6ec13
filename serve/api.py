"""The JSON API (``/api/v1``) and the health probes: each route declared beside its handler.

Errors are typed (``serve.errors``) and rendered by the Ingress as ``{"error": {"code",
"message", "field"}}`` with their status; nothing is stored for a refused request.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import yaml
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve.api_keys import MAX_RATE_LIMIT
from serve.authentication import Authenticator, identity_of
from serve.errors import InputError, NotFound, ServiceError, error_response
from serve.identity import AUDIT, DELIVER, KEYS, MODEL, PREDICT, READ_OWN, ROLES
from serve.images import image_response
from serve.inputs import validate_delivery, validate_page, validate_patient_id
from serve.prediction import public_record
from serve.predictions import PredictionService
from serve.records import IMAGE_KINDS
from serve.routes import RouteOwner, route
from serve.uploads import Upload, json_body, read_batch, read_upload

OPENAPI = yaml.safe_load(Path(__file__).with_name("openapi.yaml").read_text())
READY_CHECKS = ("model", "database")
MAX_AUDIT_ENTRIES = 1000
MAX_CLAIM = 32  # records per claim: each is an instance the gateway then fetches


class Api(RouteOwner):
    def __init__(self, predictions: PredictionService, store: DeploymentHandle, authenticator: Authenticator):
        self.predictions, self.store, self.authenticator = predictions, store, authenticator
        self.settings = predictions.settings

    async def error_response(self, request: Request, error: ServiceError) -> Response:
        return error_response(error)

    @route("/api/v1/predictions", "POST", needs=PREDICT, upload=True)
    async def create_prediction(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            upload = await read_upload(request, self.settings.max_upload_bytes)
        except InputError as exc:  # the body itself was refused
            self.predictions.reject(exc)
            raise
        return JSONResponse(await self._predict(request, upload, started))

    @route("/api/v1/predictions:batch", "POST", needs=PREDICT, batch=True)
    async def create_predictions(self, request: Request) -> Response:
        """Up to ``max_batch_items`` images in one request, each with its own fields and answered with
        its own status: one refused image never fails the others. All share the request's deadline."""
        started = time.perf_counter()
        try:
            uploads = await read_batch(request, self.settings.max_upload_bytes, self.settings.max_batch_items)
        except InputError as exc:
            self.predictions.reject(exc)
            raise
        self.authenticator.charge(request, len(uploads) - 1)  # each image counts against the rate limit
        answers = await asyncio.gather(*(self._batch_item(request, upload, started) for upload in uploads))
        return JSONResponse({"items": [{"index": i, **answer} for i, answer in enumerate(answers)]})

    async def _batch_item(self, request: Request, upload: Upload, started: float) -> dict:
        try:
            return {"status": 200, **await self._predict(request, upload, started)}
        except ServiceError as exc:
            retry = {"retry_after": exc.retry_after} if exc.retry_after is not None else {}
            return {"status": exc.status, **exc.to_json(), **retry}

    async def _predict(self, request: Request, upload: Upload, started: float) -> dict:
        return await self.predictions.answer(upload, identity_of(request), started)

    @route("/api/v1/predictions/{prediction_id}", needs=READ_OWN)
    async def get_prediction(self, request: Request) -> Response:
        record = await self.store.get.remote(request.path_params["prediction_id"], identity_of(request))
        if record is None:
            raise NotFound("no such prediction")
        return JSONResponse(public_record(record))

    @route("/api/v1/predictions/{prediction_id}/deliveries", "POST", needs=PREDICT)
    async def report_delivery(self, request: Request) -> Response:
        """Where the gateway delivered this record's SR; only a caller who may read the record reports it."""
        delivery = validate_delivery(await json_body(request))
        prediction_id = request.path_params["prediction_id"]
        outcome = await self.store.record_delivery.remote(prediction_id, delivery, identity_of(request))
        if outcome == "not_found":
            raise NotFound("no such prediction")
        if outcome == "too_many":
            raise ServiceError(409, "too_many_destinations", "this record lists the most destinations it may")
        return Response(status_code=204)

    @route("/api/v1/deliveries:claim", "POST", needs=DELIVER)
    async def claim_deliveries(self, request: Request) -> Response:
        """STOW-RS records whose results are due at the PACS, leased to the calling gateway."""
        limit = (await json_body(request, '{"limit": 1-32}')).get("limit", 8)
        if isinstance(limit, float) and limit.is_integer():  # JSON does not tell 8 from 8.0
            limit = int(limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CLAIM:
            raise InputError(400, "bad_limit", f"limit is a whole number from 1 to {MAX_CLAIM}", "limit")
        lease_s = self.settings.delivery_lease_s
        records = await self.store.claim_deliveries.remote(limit, lease_s, identity_of(request))
        return JSONResponse({"lease_s": lease_s, "items": [public_record(r) for r in records]})

    @route("/api/v1/deliveries/{prediction_id}/instance", needs=DELIVER)
    async def delivery_instance(self, request: Request) -> Response:
        """The DICOM instance a claimed record came from, while its results are due."""
        data = await self.store.delivery_instance.remote(request.path_params["prediction_id"], identity_of(request))
        if data is None:
            raise NotFound("no record whose results are due has this id")
        return Response(data, media_type="application/dicom", headers={"Cache-Control": "no-store"})

    @route("/api/v1/predictions/{prediction_id}/image", needs=READ_OWN)
    async def get_image(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "original")
        if kind not in IMAGE_KINDS:
            raise InputError(400, "bad_kind", f"kind must be one of {IMAGE_KINDS}", "kind")
        data = await self.predictions.view(request.path_params["prediction_id"], kind, identity_of(request))
        if data is None:
            raise NotFound("no such image")
        return image_response(data, f"private, max-age={self.settings.image_cache_s}")

    @route("/api/v1/patients/{patient_id}/predictions", needs=READ_OWN)
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

    @route("/api/v1/model", needs=MODEL)
    async def model(self, request: Request) -> Response:
        return JSONResponse((await self.predictions.card(refresh=True)).to_dict())

    @route("/api/v1/openapi.json", needs=None)
    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    @route("/healthz", needs=None)
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @route("/readyz", needs=None)
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

    @route("/api/v1/audit", needs=AUDIT)
    async def audit_log(self, request: Request) -> Response:
        """The audit log, newest first, filtered by plain values (auditors and admins)."""
        params = request.query_params
        query = {name: params[name] for name in ("patient_id", "actor", "prediction_id", "action") if name in params}
        limit = params.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_AUDIT_ENTRIES:
            raise InputError(400, "bad_limit", f"limit is a whole number from 1 to {MAX_AUDIT_ENTRIES}", "limit")
        entries = await self.store.audit_entries.remote(identity_of(request), limit=int(limit), **query)
        return JSONResponse({"items": [entry | {"at": entry["at"].isoformat()} for entry in entries]})

    @route("/api/v1/keys", needs=KEYS)
    async def list_keys(self, request: Request) -> Response:
        keys = await self.store.list_keys.remote()
        return JSONResponse(
            {"items": [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in key.items()} for key in keys]}
        )

    @route("/api/v1/keys", "POST", needs=KEYS)
    async def create_key(self, request: Request) -> Response:
        body = await json_body(request, "name, role, rate_limit_per_minute")
        name, role, limit = body.get("name"), body.get("role", "clinician"), body.get("rate_limit_per_minute")
        if not isinstance(name, str) or not 1 <= len(name) <= 100 or role not in ROLES:
            raise InputError(400, "bad_key", f"name is 1-100 characters, role one of {ROLES}", "name")
        if isinstance(limit, float) and limit.is_integer():  # JSON does not tell 60 from 60.0
            limit = int(limit)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RATE_LIMIT
        ):
            raise InputError(
                400,
                "bad_key",
                f"rate_limit_per_minute is a whole number from 1 to {MAX_RATE_LIMIT}",
                "rate_limit_per_minute",
            )
        key_id, token = await self.store.create_key.remote(identity_of(request), name, role, limit)
        return JSONResponse({"key_id": key_id, "api_key": token, "name": name, "role": role}, 201)

    @route("/api/v1/keys/{key_id}", "DELETE", needs=KEYS)
    async def revoke_key(self, request: Request) -> Response:
        if not await self.store.revoke_key.remote(identity_of(request), request.path_params["key_id"]):
            raise NotFound("no such active key")
        return Response(status_code=204)
