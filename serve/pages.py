"""The clinician pages: each route declared beside its handler, data for ``ui``'s templates.

Every page is a full HTML document for a plain browser request and a partial for an htmx request
(``HX-Request``), so everything works without JavaScript. Authentication and the forms' CSRF
check are applied by ``serve.routes``; handlers only do their own job.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime

from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from cxr_model.preprocessing import open_image, sniff_format
from serve.authentication import Authenticator, identity_of, too_many
from serve.errors import InputError, InvalidRequest, ServiceError, Unavailable
from serve.held_uploads import HeldUploads, held_size
from serve.identity import MODEL, PREDICT, READ_OWN, REVIEW
from serve.images import (
    PAGE_IMAGE_CACHE,
    THUMBNAIL_SIDE,
    annotated,
    browser_png,
    display_copy,
    gradcam_overlay,
    image_response,
    jpeg,
)
from serve.inputs import MAX_PAGE, validate_page, validate_patient_id
from serve.page_base import FORBIDDEN, PageBase, secure
from serve.prediction import ANALYSED, Prediction, public_record
from serve.predictions import PredictionService
from serve.records import IMAGE_KINDS, SaveResult, now
from serve.routes import route
from serve.sessions import SESSION_COOKIE, SessionCookies
from serve.uploads import Upload, read_upload
from ui.views import data_uri, field_messages, headline_metrics, is_htmx, probability_rows, scope_rates

PAGE_SIZE = 10
PAGE_MESSAGE = f"The page number must be a whole number from 1 to {MAX_PAGE}."
UNAVAILABLE = {
    "model_changing": "The model is being replaced. Try again in a moment.",
    "overloaded": "The service is busy right now. Try again in a few seconds.",
    "timeout": "The prediction took too long. Try again in a few seconds.",
}
KEY_REUSED = "This form was already used to save another image or patient. Reload the page and try again."
INSTANCE_CONFLICT = (
    "A different image or patient is already stored under this DICOM file's SOP Instance UID. "
    "Check the file with the PACS administrator before saving it."
)


def save_conflict(saved: SaveResult | None) -> str | None:
    """Why a save stored nothing because it names an earlier save of something else, if it does."""
    if saved is not None and saved.key_reused:
        return KEY_REUSED
    if saved is not None and saved.instance_conflict:
        return INSTANCE_CONFLICT
    return None


NOT_HELD = (
    "This prediction is no longer held for saving (results are kept for 15 minutes). "
    "Choose the image again and tick 'Save to record'."
)


def result_view(prediction: Prediction, saved: SaveResult | None = None, can_save: bool = False) -> dict:
    """What ``_result.html`` shows; images are display-sized data URIs (nothing stored yet)."""
    display = display_copy(prediction.request.original)
    gradcam = gradcam_overlay(prediction, display)
    model = prediction.model
    return {
        "patient_id": prediction.request.patient_id,
        "request_id": prediction.request.request_id,
        "top_label": prediction.top_label,
        "confidence": prediction.confidence,
        "low_confidence": prediction.output.low_confidence,
        "rows": probability_rows(
            prediction.probabilities, model["labels"], model.get("thresholds"), prediction.output.positives
        ),
        "model": model,
        "annotated_src": data_uri(jpeg(annotated(prediction, display)), "image/jpeg"),
        "gradcam_src": data_uri(jpeg(gradcam), "image/jpeg") if gradcam is not None else None,
        "gradcam_label": prediction.gradcam_label,
        "saved": bool(saved and saved.saved),
        "prediction_id": saved.prediction_id if saved else None,
        "save_error": saved.reason if saved and not saved.saved else None,
        "can_save": can_save,
    }


def thumbnail_jpeg(data: bytes, max_pixels: int) -> bytes:
    return jpeg(display_copy(open_image(data, max_pixels), THUMBNAIL_SIDE))


class Pages(PageBase):
    def __init__(self, predictions: PredictionService, store: DeploymentHandle, authenticator: Authenticator):
        super().__init__(predictions, store, authenticator)
        self.held = HeldUploads(
            self.settings.held_uploads, self.settings.held_upload_bytes, self.settings.held_upload_s
        )

    # -- shared page plumbing ------------------------------------------------------------------------

    def _form(self, fields: dict | None = None, errors: dict | None = None, held: str | None = None) -> dict:
        fields = fields or {}
        return {
            "patient_id": fields.get("patient_id", ""),
            "explain": fields.get("explain") == "gradcam",
            "save": fields.get("save") in ("1", "on"),
            "request_id": fields.get("request_id") or uuid.uuid4().hex,
            "held_filename": held,
            "errors": errors or {},
        }

    async def _error_page(
        self, request: Request, status: int, fields: dict, errors: dict, held: str | None = None
    ) -> Response:
        return await self._page(
            request,
            "new_prediction.html",
            "_prediction_errors.html",
            status,
            form=self._form(fields, errors, held),
            result=None,
            error=errors,
        )

    async def form_refused(self, request: Request, error: ServiceError) -> Response:
        if isinstance(error, InputError):
            self.predictions.reject(error)
        return await self._error_page(
            request, error.status, {}, field_messages([(error.field, error.code, str(error))])
        )

    async def forbidden(self, request: Request) -> Response:
        if is_htmx(request.headers):
            return await self._error_page(request, 403, {}, {"form": FORBIDDEN})
        return await self._message(request, 403, "Form expired", FORBIDDEN)

    async def upload_form(self, request: Request) -> Upload:
        return await read_upload(request, self.settings.max_upload_bytes, image_required=False)

    # -- new prediction ------------------------------------------------------------------------------

    @route("/", needs=PREDICT)
    async def new_prediction(self, request: Request) -> Response:
        return await self._page(request, "new_prediction.html", None, form=self._form(), result=None, error=None)

    def _hold_for_retry(self, request: Request, upload: Upload, errors: dict) -> str | None:
        """Keep a plain post's file when only other fields were wrong, so the clinician need not pick it again."""
        request_id = upload.fields.get("request_id")  # the page's hidden field; a bare client may omit it
        if upload.data is None or not request_id or {"image", "request_id"} & set(errors) or is_htmx(request.headers):
            return None
        self.held.put(request_id, (upload.data, upload.filename), held_size(None, upload.data))
        return upload.filename or "the uploaded image"

    @route("/predictions", "POST", needs=PREDICT, form="upload_form", upload=True)
    async def create_prediction(self, request: Request, upload: Upload) -> Response:
        started = time.perf_counter()
        held = self.held.get(upload.fields.get("request_id")) if upload.data is None else None
        if isinstance(held, tuple):  # a plain post re-using the file from the last attempt
            upload.data, upload.filename = held
        try:
            checked = await self.predictions.check(upload)
        except InvalidRequest as exc:
            errors = field_messages(exc.triples())
            keep = self._hold_for_retry(request, upload, errors)
            return await self._error_page(request, exc.page_status(), upload.fields, errors, keep)
        try:
            prediction = await self.predictions.predict_within_deadline(checked, started)
        except InvalidRequest as exc:  # out of scope: the reason goes beside the image field, no label
            return await self._error_page(request, exc.status, upload.fields, field_messages(exc.triples()))
        except Unavailable as exc:
            response = await self._error_page(request, exc.status, upload.fields, {"form": UNAVAILABLE[exc.code]})
            response.headers.update(exc.headers())
            return response
        saved = await self.predictions.save(prediction, identity_of(request)) if checked.save else None
        if conflict := save_conflict(saved):
            return await self._error_page(request, 409, upload.fields, {"form": conflict})
        if not (saved and saved.saved):
            self.held.put(checked.request_id, prediction, held_size(prediction, checked.data))
        return await self._show_result(request, prediction, saved)

    async def _show_result(self, request: Request, prediction: Prediction, saved: SaveResult | None) -> Response:
        if saved and saved.saved and not is_htmx(request.headers):
            return RedirectResponse(f"/predictions/{saved.prediction_id}", 303)
        return await self._page(
            request,
            "new_prediction.html",
            "_prediction_result.html",
            form=self._form({"patient_id": prediction.request.patient_id}),
            error=None,
            result=await self.predictions.off_loop(result_view, prediction, saved, not (saved and saved.saved)),
        )

    @route("/predictions/save", "POST", needs=PREDICT, form="small_form")
    async def save_prediction(self, request: Request, form: Upload) -> Response:
        prediction = self.held.get(form.fields.get("request_id", ""))
        if not isinstance(prediction, Prediction):
            return await self._error_page(request, 409, {}, {"form": NOT_HELD})
        # Kept after saving: a repeated click saves nothing new (the request id is the record's key).
        saved = await self.predictions.save(prediction, identity_of(request))
        if conflict := save_conflict(saved):
            return await self._error_page(request, 409, {}, {"form": conflict})
        return await self._show_result(request, prediction, saved)

    # -- stored predictions --------------------------------------------------------------------------

    @route("/predictions/{prediction_id}", needs=READ_OWN)
    async def prediction(self, request: Request) -> Response:
        try:
            record = await self.store.get.remote(request.path_params["prediction_id"], identity_of(request))
        except Exception:
            return await self._message(
                request, 503, "Records unavailable", "The database cannot be reached. Try again shortly."
            )
        if record is None:
            return await self._message(request, 404, "Prediction not found", "No stored prediction has this ID.")
        record = public_record(record)
        # The page's own image route: the browser holds a session cookie, not the API's bearer key.
        record["images"] = {
            kind: f"/predictions/{record['prediction_id']}/image?kind={kind}" for kind in record["images"]
        }
        rows, reviews, actor = [], [], identity_of(request)
        if record["status"] == ANALYSED:
            model = record["model"]
            rows = probability_rows(
                record["probabilities"], model["labels"], model.get("thresholds"), record.get("positives")
            )
            reviews = await self.store.review_history.remote(record["prediction_id"], actor)
        if record.get("reading"):
            until = datetime.fromisoformat(record["reading"]["until"])
            record["reading"] |= {"live": until > now(), "until_text": until.strftime("%H:%M UTC")}
        context = {"rows": rows, "reviews": reviews, "can_review": actor.may(REVIEW), "user_name": actor.name}
        return await self._page(request, "prediction.html", None, record=record, **context)

    @route("/predictions/{prediction_id}/image", needs=READ_OWN)
    async def prediction_image(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "original")
        if kind not in IMAGE_KINDS:
            return Response("unknown image kind", 400, media_type="text/plain")
        try:
            data = await self.predictions.view(request.path_params["prediction_id"], kind, identity_of(request))
        except Exception:
            return Response(status_code=503)
        if data is None:
            return Response(status_code=404)
        if sniff_format(data) == "dicom":  # a page's <img> cannot show the DICOM file itself
            data = await self.predictions.off_loop(browser_png, data, self.settings.max_pixels)
        return image_response(data, PAGE_IMAGE_CACHE)

    @route("/predictions/{prediction_id}/thumbnail", needs=READ_OWN)
    async def thumbnail(self, request: Request) -> Response:
        try:
            data = await self.store.thumbnail_source.remote(request.path_params["prediction_id"], identity_of(request))
        except Exception:
            return Response(status_code=503)
        if data is None:
            return Response(status_code=404)
        thumbnail = await self.predictions.off_loop(thumbnail_jpeg, data, self.settings.max_pixels)
        return image_response(thumbnail, PAGE_IMAGE_CACHE, "image/jpeg")

    @route("/studies{rest:path}", "GET", "POST", needs=None)
    async def legacy_study_urls(self, request: Request) -> Response:
        """The pages' URLs before predictions had their own name; 308 keeps a form post's method and body."""
        target = "/predictions" + request.path_params["rest"]
        if request.url.query:
            target += "?" + request.url.query
        return RedirectResponse(target, 301 if request.method == "GET" else 308)

    @route("/patients", needs=READ_OWN)
    async def patients(self, request: Request) -> Response:
        raw = request.query_params.get("patient_id", "").strip()
        context = {"patient_id": raw, "items": [], "total": 0, "page": 1, "pages": 0, "error": None}
        status = 200
        if raw:
            try:
                patient_id = validate_patient_id(raw)
                page, _ = validate_page(request.query_params.get("page"), default_size=PAGE_SIZE)
                records, total = await self.store.by_patient.remote(patient_id, page, PAGE_SIZE, identity_of(request))
                context.update(
                    items=[public_record(r) for r in records],
                    total=total,
                    page=page,
                    pages=(total + PAGE_SIZE - 1) // PAGE_SIZE,
                )
            except InputError as exc:
                context["error"], status = (PAGE_MESSAGE if exc.code == "bad_page" else str(exc)), exc.status
            except Exception:
                context["error"], status = "Patient records are unavailable: the database cannot be reached.", 503
        return await self._page(request, "patients.html", "_patient_results.html", status, **context)

    @route("/model", needs=MODEL)
    async def model(self, request: Request) -> Response:
        card = (await self.predictions.card(refresh=True)).to_dict()
        return await self._page(
            request,
            "model.html",
            None,
            card=card,
            metrics=headline_metrics(card.get("metrics") or {}),
            scope_rates=scope_rates(card.get("scope") or {}),
        )

    # -- sign-in -------------------------------------------------------------------------------------

    @route("/login", needs=None)
    async def login_form(self, request: Request, status: int = 200, error: str | None = None) -> Response:
        return await self._page(
            request,
            "login.html",
            None,
            status,
            error=error,
            mode=self.settings.auth,
            next=_local_path(request.query_params.get("next")),
        )

    @route("/login", "POST", needs=None, form="small_form")
    async def login(self, request: Request, form: Upload) -> Response:
        """An API key pasted once starts a page session (HttpOnly, SameSite=Strict cookie)."""
        if self.settings.auth != "api_key":
            return RedirectResponse("/", 303)
        token = form.fields.get("api_key", "").strip()
        client = request.client.host if request.client else None
        identity = await self.authenticator.verify_token(token) if token else None
        if identity is None:  # a wrong key costs the client address a token: no guessing at speed
            wait = self.authenticator.refusals.take(client or "-")
            if wait > 0:
                return too_many(request, wait)
            return await self.login_form(request, 401, "This API key is not valid or has been revoked.")
        session_id = await self.store.start_session.remote(identity, client)
        response = RedirectResponse(_local_path(form.fields.get("next")), 303)
        response.headers.append("set-cookie", self.authenticator.cookies.header(session_id, secure(request)))
        return response

    @route("/logout", "POST", needs=None, form="small_form")
    async def logout(self, request: Request, form: Upload) -> Response:
        """Ends the session server-side, so a copy of the cookie stops working too."""
        cookie = request.cookies.get(SESSION_COOKIE)
        session_id = self.authenticator.cookies.session_id(cookie)
        if session_id is not None:
            try:
                identity = await self.authenticator.session_identity(cookie)
                await self.store.end_session.remote(session_id, identity)
            except Exception:  # the database is down: the cookie still goes, the session ends by idling
                pass
            self.authenticator.forget(cookie)
        response = RedirectResponse("/login", 303)
        response.headers.append("set-cookie", SessionCookies.clear_header())
        return response


def _local_path(target) -> str:
    """Where to go after login: a path on this site only (no open redirect)."""
    if isinstance(target, str) and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"
