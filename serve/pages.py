"""The clinician pages: routes and data for ``ui``'s templates.

Every page is a full HTML document for a plain browser request and a partial
for an htmx request (``HX-Request``), so everything works without JavaScript.
An upload is held in memory for a short while so that "Save to record" stores
exactly the prediction the clinician saw, and so that a plain form post that
failed validation does not make the clinician choose the file again.
"""

from __future__ import annotations

import io
import time
import uuid
from collections import OrderedDict

from PIL import Image
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from cxr_model.annotate import DEMO_NOTICE, NOTICE
from cxr_model.preprocessing import display_image, open_image
from serve import csrf
from serve.auth import Access, identity_of
from serve.inputs import InputError, validate_patient_id
from serve.store import IMAGE_KINDS
from serve.studies import (
    InvalidStudy, Prediction, StudyService, Unavailable, image_response, public_record, read_upload,
)
from ui.views import PageRenderer, data_uri, field_messages, headline_metrics, is_htmx, probability_rows

DISPLAY_SIDE = 1024  # the result view's image size; stored images keep full resolution
THUMBNAIL_SIDE = 160
PAGE_SIZE = 10
UNAVAILABLE = {"model_changing": "The model is being replaced. Try again in a moment.",
               "overloaded": "The service is busy right now. Try again in a few seconds.",
               "timeout": "The prediction took too long. Try again in a few seconds."}


class HeldUploads:
    """Recent uploads by request id: bounded in count, bytes and age, so memory stays flat.

    Per Ingress replica: with several replicas a follow-up post may land elsewhere, and the page
    then asks for the file again instead of guessing.
    """

    def __init__(self, max_items: int = 32, max_bytes: int = 256 * 1024 * 1024, ttl_s: float = 900):
        self.max_items, self.max_bytes, self.ttl_s = max_items, max_bytes, ttl_s
        self.items: OrderedDict[str, tuple[float, int, object]] = OrderedDict()

    def put(self, key: str, value, size: int) -> None:
        self.items.pop(key, None)
        self.items[key] = (time.monotonic() + self.ttl_s, size, value)
        while len(self.items) > self.max_items or sum(s for _, s, _ in self.items.values()) > self.max_bytes:
            self.items.popitem(last=False)

    def get(self, key: str | None):
        entry = self.items.get(key or "")
        if entry is None or entry[0] < time.monotonic():
            self.items.pop(key or "", None)
            return None
        return entry[2]


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def result_view(prediction: Prediction, saved: dict | None = None, can_save: bool = False) -> dict:
    """What ``_result.html`` shows; images are display-sized data URIs (nothing stored yet)."""
    display = display_image(prediction.inputs.original).copy()
    display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    gradcam = prediction.gradcam(display)
    model = prediction.model
    return {
        "patient_id": prediction.inputs.patient_id, "request_id": prediction.inputs.request_id,
        "top_label": prediction.top_label, "confidence": prediction.confidence,
        "low_confidence": prediction.low_confidence,
        "rows": probability_rows(prediction.probabilities, model["labels"], model.get("thresholds"),
                                 prediction.positives),
        "model": model, "annotated_src": data_uri(_jpeg(prediction.annotated(display)), "image/jpeg"),
        "gradcam_src": data_uri(_jpeg(gradcam), "image/jpeg") if gradcam is not None else None,
        "gradcam_label": prediction.gradcam_label,
        "saved": bool(saved and saved["saved"]), "prediction_id": saved["prediction_id"] if saved else None,
        "save_error": saved.get("reason") if saved and not saved["saved"] else None, "can_save": can_save,
    }


class Pages:
    def __init__(self, studies: StudyService, store: DeploymentHandle, access: Access):
        self.studies, self.store, self.access = studies, store, access
        self.renderer = PageRenderer(NOTICE, DEMO_NOTICE)
        self.held = HeldUploads()

    def routes(self) -> list[Route]:
        return [Route("/", self.new_study, methods=["GET"]),
                Route("/studies", self.create_study, methods=["POST"]),
                Route("/studies/save", self.save_study, methods=["POST"]),
                Route("/studies/{prediction_id}", self.study, methods=["GET"]),
                Route("/studies/{prediction_id}/thumbnail", self.thumbnail, methods=["GET"]),
                Route("/studies/{prediction_id}/image", self.study_image, methods=["GET"]),
                Route("/patients", self.patients, methods=["GET"]),
                Route("/model", self.model, methods=["GET"]),
                Route("/login", self.login_form, methods=["GET"]),
                Route("/login", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["POST"])]

    async def _synthetic_demo(self) -> bool:
        try:
            return bool((await self.studies.card()).synthetic_demo)
        except Exception:  # the banner must not take the page down with the model
            return False

    async def _page(self, request: Request, full: str, partial: str | None, status: int = 200, **context) -> Response:
        template = partial if partial and is_htmx(request.headers) else full
        context["synthetic_demo"] = await self._synthetic_demo()
        context["csrf_token"], new_token = csrf.token_for(request.cookies)
        context["auth_off"] = self.access.off
        identity = getattr(request.state, "identity", None)
        context["user"] = identity.name if identity is not None and not self.access.off else None
        headers = {"Cache-Control": "no-store", "Vary": "HX-Request"}  # pages show patient data
        response = HTMLResponse(self.renderer.render(template, **context), status, headers=headers)
        if new_token:
            secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
            response.headers.append("set-cookie", csrf.cookie_header(context["csrf_token"], secure))
        return response

    async def _forbidden(self, request: Request) -> Response:
        message = "This form has expired or did not come from this site. Reload the page and try again."
        return await self._page(request, "new_study.html", "_study_errors.html", 403,
                                form=self._form(), result=None, error={"form": message})

    def _form(self, fields: dict | None = None, errors: dict | None = None, held: str | None = None) -> dict:
        fields = fields or {}
        return {"patient_id": fields.get("patient_id", ""), "explain": fields.get("explain") == "gradcam",
                "save": fields.get("save") in ("1", "on"), "request_id": fields.get("request_id") or uuid.uuid4().hex,
                "held_filename": held, "errors": errors or {}}

    async def new_study(self, request: Request) -> Response:
        return await self._page(request, "new_study.html", None, form=self._form(), result=None, error=None)

    async def _study_error(self, request: Request, status: int, fields: dict, errors: dict,
                           held: str | None = None) -> Response:
        return await self._page(request, "new_study.html", "_study_errors.html", status,
                                form=self._form(fields, errors, held), result=None, error=errors)

    async def create_study(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            upload = await read_upload(request, self.studies.settings.max_upload_bytes, image_required=False)
        except InputError as exc:
            self.studies.reject(exc)
            return await self._study_error(request, exc.status, {}, field_messages([(exc.field, exc.code, str(exc))]))
        if not csrf.valid(request.cookies, upload.fields.get(csrf.FIELD)):
            return await self._forbidden(request)
        held = self.held.get(upload.fields.get("request_id")) if upload.data is None else None
        if isinstance(held, tuple):  # a plain post re-using the file from the last attempt
            upload.data, upload.filename = held
        try:
            inputs = self.studies.check(upload)
        except InvalidStudy as exc:
            errors = field_messages(exc.triples())
            keep = None
            request_id = upload.fields.get("request_id")  # the page's hidden field; a bare client may omit it
            if upload.data is not None and request_id and not {"image", "request_id"} & set(errors) \
                    and not is_htmx(request.headers):
                self.held.put(request_id, (upload.data, upload.filename), len(upload.data))
                keep = upload.filename or "the uploaded image"
            status = max((e.status for e in exc.errors), key=lambda s: (s != 400, s))
            return await self._study_error(request, status, upload.fields, errors, keep)
        try:
            prediction = await self.studies.predict_within_deadline(inputs, started)
        except InvalidStudy as exc:  # out of scope: the reason goes beside the image field, no label
            return await self._study_error(request, exc.first.status, upload.fields, field_messages(exc.triples()))
        except Unavailable as exc:
            response = await self._study_error(request, exc.status, upload.fields, {"form": UNAVAILABLE[exc.code]})
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        saved = await self.studies.save(prediction, identity_of(request)) if inputs.save else None
        can_save = not (saved and saved["saved"])
        if can_save:
            self.held.put(inputs.request_id, prediction, len(inputs.data))
        if saved and saved["saved"] and not is_htmx(request.headers):
            return RedirectResponse(f"/studies/{saved['prediction_id']}", 303)
        return await self._page(request, "new_study.html", "_study_result.html",
                                form=self._form({"patient_id": inputs.patient_id}), error=None,
                                result=result_view(prediction, saved, can_save))

    async def save_study(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4, max_part_size=1024)
        request_id, token = str(form.get("request_id", "")), form.get(csrf.FIELD)
        await form.close()
        if not csrf.valid(request.cookies, token):
            return await self._forbidden(request)
        prediction = self.held.get(request_id)
        if not isinstance(prediction, Prediction):
            message = ("This prediction is no longer held for saving (results are kept for 15 minutes). "
                       "Choose the image again and tick 'Save to record'.")
            return await self._study_error(request, 409, {}, {"form": message})
        # Kept after saving: a repeated click saves nothing new (the request id is the record's key).
        saved = await self.studies.save(prediction, identity_of(request))
        if saved["saved"] and not is_htmx(request.headers):
            return RedirectResponse(f"/studies/{saved['prediction_id']}", 303)
        return await self._page(request, "new_study.html", "_study_result.html",
                                form=self._form({"patient_id": prediction.inputs.patient_id}), error=None,
                                result=result_view(prediction, saved, not saved["saved"]))

    async def study(self, request: Request) -> Response:
        try:
            record = await self.store.get.remote(request.path_params["prediction_id"], identity_of(request))
        except Exception:
            return await self._page(request, "message.html", None, 503, title="Records unavailable",
                                    message="The database cannot be reached. Try again shortly.")
        if record is None:
            return await self._page(request, "message.html", None, 404, title="Study not found",
                                    message="No stored study has this ID.")
        record = public_record(record)
        # The page's own image route: the browser holds a session cookie, not the API's bearer key.
        record["images"] = {kind: f"/studies/{record['prediction_id']}/image?kind={kind}" for kind in record["images"]}
        model = record["model"]
        rows = probability_rows(record["probabilities"], model["labels"], model.get("thresholds"),
                                record.get("positives"))
        return await self._page(request, "study.html", None, record=record, rows=rows)

    async def study_image(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "original")
        if kind not in IMAGE_KINDS:
            return Response("unknown image kind", 400, media_type="text/plain")
        try:
            data = await self.store.image.remote(request.path_params["prediction_id"], kind, identity_of(request))
        except Exception:
            return Response(status_code=503)
        return Response(status_code=404) if data is None else image_response(data)

    async def thumbnail(self, request: Request) -> Response:
        try:
            data = await self.store.thumbnail_source.remote(request.path_params["prediction_id"])
        except Exception:
            return Response(status_code=503)
        if data is None:
            return Response(status_code=404)
        image = display_image(open_image(data, self.studies.settings.max_pixels))
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        return Response(_jpeg(image), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def patients(self, request: Request) -> Response:
        raw = request.query_params.get("patient_id", "").strip()
        context = {"patient_id": raw, "items": [], "total": 0, "page": 1, "pages": 0, "error": None}
        status = 200
        if raw:
            try:
                patient_id = validate_patient_id(raw)
                page = max(1, int(request.query_params.get("page", "1") or 1))
                records, total = await self.store.by_patient.remote(patient_id, page, PAGE_SIZE, identity_of(request))
                context.update(items=[public_record(r) for r in records], total=total, page=page,
                               pages=(total + PAGE_SIZE - 1) // PAGE_SIZE)
            except InputError as exc:
                context["error"], status = str(exc), exc.status
            except ValueError:
                context["error"], status = "The page number must be a whole number.", 400
            except Exception:
                context["error"], status = "Patient records are unavailable: the database cannot be reached.", 503
        return await self._page(request, "patients.html", "_patient_results.html", status, **context)

    async def model(self, request: Request) -> Response:
        card = (await self.studies.card(refresh=True)).to_dict()
        return await self._page(request, "model.html", None, card=card,
                                metrics=headline_metrics(card.get("metrics") or {}))

    async def login_form(self, request: Request, status: int = 200, error: str | None = None) -> Response:
        return await self._page(request, "login.html", None, status, error=error, mode=self.access.settings.auth,
                                next=_local_path(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        """An API key pasted once starts a page session (HttpOnly, SameSite=Strict cookie)."""
        form = await request.form(max_files=0, max_fields=4, max_part_size=1024)
        token, submitted, target = str(form.get("api_key", "")).strip(), form.get(csrf.FIELD), form.get("next")
        await form.close()
        if not csrf.valid(request.cookies, submitted):
            return await self.login_form(request, 403, "This form has expired. Reload the page and try again.")
        if self.access.settings.auth != "api_key":
            return RedirectResponse("/", 303)
        identity = await self.access.verify_token(token) if token else None
        if identity is None:
            return await self.login_form(request, 401, "This API key is not valid or has been revoked.")
        await self.store.record_login.remote(identity, request.client.host if request.client else None)
        response = RedirectResponse(_local_path(target), 303)
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        response.headers.append("set-cookie", self.access.sessions.cookie_header(
            self.access.sessions.issue(identity.key_id), secure))
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=2, max_part_size=1024)
        submitted = form.get(csrf.FIELD)
        await form.close()
        if not csrf.valid(request.cookies, submitted):
            return await self._forbidden(request)
        response = RedirectResponse("/login", 303)
        response.headers.append("set-cookie", self.access.sessions.clear_header())
        return response


def _local_path(target) -> str:
    """Where to go after login: a path on this site only (no open redirect)."""
    if isinstance(target, str) and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"
