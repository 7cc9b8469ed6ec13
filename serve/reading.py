"""The reading room: the worklist, claiming a study to read, and the radiologist's review, as JSON
API and pages, each route beside its handler.

The worklist is every unreviewed analysed record, all patients (``READ``), in the order of
``serve.worklist``. Claiming and reviewing need ``REVIEW`` (radiologists). Pages work without
JavaScript (filters are a GET form, "Read" and the review are plain POST forms); with htmx the
list refreshes itself in place (``_worklist_rows.html``) without moving the reader's focus.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from serve.authentication import identity_of
from serve.errors import InputError, NotFound, ServiceError, error_response
from serve.identity import READ, READ_OWN, REVIEW
from serve.inputs import validate_page, validate_review
from serve.page_base import PageBase
from serve.records import now
from serve.reviews import Claim
from serve.routes import route
from serve.uploads import Upload, json_body, read_small_form
from serve.worklist import BANDS, WorklistEntry, order

PAGE_SIZE = 50
MAX_SOURCE = 100


@dataclass(frozen=True)
class WorklistFilters:
    band: str | None = None
    source: str | None = None
    since: date | None = None  # received on or after this day (UTC)
    until: date | None = None  # received on or before this day (UTC)
    page: int = 1

    @classmethod
    def parse(cls, query) -> "WorklistFilters":
        band, source = query.get("band") or None, (query.get("source") or "").strip() or None
        if band is not None and band not in BANDS:
            raise InputError(400, "bad_filter", f"band is one of {BANDS}", "band")
        if source is not None and len(source) > MAX_SOURCE:  # matched exactly against a sender's name
            raise InputError(400, "bad_filter", f"source is at most {MAX_SOURCE} characters", "source")
        since, until = _day(query.get("since"), "since"), _day(query.get("until"), "until")
        if since and until and since > until:
            raise InputError(400, "bad_filter", "since is a day on or before until", "since")
        page, _ = validate_page(query.get("page"))
        return cls(band, source, since, until, page)

    def window(self) -> tuple[datetime | None, datetime | None]:
        start = datetime.combine(self.since, time(), timezone.utc) if self.since else None
        end = datetime.combine(self.until, time(), timezone.utc) + timedelta(days=1) if self.until else None
        return start, end

    def query(self, page: int | None = None) -> str:
        """These filters as a query string, for links that keep them (page 1 left out)."""
        pairs = {"band": self.band, "source": self.source, "since": self.since, "until": self.until}
        pairs["page"] = page or self.page
        return urlencode({k: str(v) for k, v in pairs.items() if v and not (k == "page" and v == 1)})


def _day(value: str | None, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(400, "bad_filter", f"{field} is a day as YYYY-MM-DD", field) from None


def claim_error(claim: Claim) -> ServiceError:
    if claim.outcome == "not_found":
        return NotFound("no analysed record has this id")
    if claim.outcome == "reviewed":
        return ServiceError(409, "already_reviewed", "this study has been reviewed; its page shows the review")
    return ServiceError(
        409,
        "being_read",
        f"{claim.by} is reading this study until {claim.until:%H:%M} UTC",
        details={"reading_by": claim.by, "reading_until": claim.until.isoformat()},
    )


class Reading(PageBase):
    async def _worklist(self, request: Request, filters: WorklistFilters) -> tuple[list[WorklistEntry], list[str]]:
        since, until = filters.window()
        records, sources = await self.store.worklist.remote(identity_of(request), filters.source, since, until)
        return order(records, now(), self.settings.urgency_policy(), filters.band), sources

    # -- JSON API ------------------------------------------------------------------------------------

    @route("/api/v1/worklist", needs=READ)
    async def worklist_api(self, request: Request) -> Response:
        filters = WorklistFilters.parse(request.query_params)
        entries, _ = await self._worklist(request, filters)
        start = (filters.page - 1) * PAGE_SIZE
        body = {"page": filters.page, "page_size": PAGE_SIZE, "total": len(entries)}
        return JSONResponse(body | {"items": [e.to_dict() for e in entries[start : start + PAGE_SIZE]]})

    @route("/api/v1/worklist/{prediction_id}/claim", "POST", needs=REVIEW)
    async def claim_api(self, request: Request) -> Response:
        claim = await self._claim(request)
        return JSONResponse({"reading_by": claim.by, "reading_until": claim.until.isoformat()})

    @route("/api/v1/worklist/{prediction_id}/claim", "DELETE", needs=REVIEW)
    async def release_api(self, request: Request) -> Response:
        released = await self.store.release_review.remote(request.path_params["prediction_id"], identity_of(request))
        if not released:
            raise NotFound("you hold no claim on this study")
        return Response(status_code=204)

    @route("/api/v1/predictions/{prediction_id}/reviews", "POST", needs=REVIEW)
    async def review_api(self, request: Request) -> Response:
        review = await self._review(request, await json_body(request, "verdict, findings, comment"))
        return JSONResponse(public_review(review), 201)

    @route("/api/v1/predictions/{prediction_id}/reviews", needs=READ_OWN)
    async def reviews_api(self, request: Request) -> Response:
        history = await self.store.review_history.remote(request.path_params["prediction_id"], identity_of(request))
        return JSONResponse({"items": [public_review(r) for r in history]})

    async def _claim(self, request: Request) -> Claim:
        prediction_id, minutes = request.path_params["prediction_id"], self.settings.review_claim_minutes
        claim = await self.store.claim_for_review.remote(prediction_id, minutes, identity_of(request))
        if claim.outcome != "claimed":
            raise claim_error(claim)
        return claim

    async def _review(self, request: Request, body: dict) -> dict:
        prediction_id, actor = request.path_params["prediction_id"], identity_of(request)
        record = await self.store.get.remote(prediction_id, actor)
        if record is None or record.get("status") == "not_analysed":
            raise NotFound("no analysed record has this id")
        review = await self.store.add_review.remote(prediction_id, validate_review(body, record), actor)
        if review is None:
            raise NotFound("no analysed record has this id")
        return review

    # -- pages ---------------------------------------------------------------------------------------

    async def error_response(self, request: Request, error: ServiceError) -> Response:
        if request.url.path.startswith("/api/"):
            return error_response(error)
        return await super().error_response(request, error)

    async def review_form(self, request: Request) -> Upload:
        return await read_small_form(request, max_fields=40, max_field_bytes=8 * 1024)

    @route("/worklist", needs=READ)
    async def worklist_page(self, request: Request) -> Response:
        try:
            filters = WorklistFilters.parse(request.query_params)
        except InputError as exc:
            return await self._message(request, exc.status, "Worklist filter refused", str(exc))
        entries, sources = await self._worklist(request, filters)
        start = (filters.page - 1) * PAGE_SIZE
        context = {
            "entries": entries[start : start + PAGE_SIZE],
            "total": len(entries),
            "filters": filters,
            "sources": sources,
            "bands": BANDS,
            "pages": max(1, (len(entries) + PAGE_SIZE - 1) // PAGE_SIZE),
            "can_review": identity_of(request).may(REVIEW),
            "user_name": identity_of(request).name,
            "max_wait_minutes": int(self.settings.worklist_max_wait_minutes),
            "generated_at": now(),
        }
        return await self._page(request, "worklist.html", "_worklist_rows.html", **context)

    @route("/worklist/{prediction_id}/read", "POST", needs=REVIEW, form="small_form")
    async def read_page(self, request: Request, form: Upload) -> Response:
        try:
            await self._claim(request)
        except ServiceError as exc:
            return await self._message(request, exc.status, "Study not claimed", str(exc))
        return RedirectResponse(f"/predictions/{request.path_params['prediction_id']}#review", 303)

    @route("/predictions/{prediction_id}/reviews", "POST", needs=REVIEW, form="review_form")
    async def review_page(self, request: Request, form: Upload) -> Response:
        fields = form.fields
        findings = sorted({v for k, v in fields.items() if k.startswith("finding-")})
        body = {"verdict": fields.get("verdict"), "comment": fields.get("comment", "")}
        if fields.get("verdict") == "disagree":
            body["findings"] = findings
        try:
            await self._review(request, body)
        except ServiceError as exc:
            return await self._message(request, exc.status, "Review not recorded", str(exc))
        return RedirectResponse("/worklist", 303)


def public_review(review: dict) -> dict:
    out = {k: v for k, v in review.items() if k not in ("_id", "at")}
    return out | {"review_id": review["_id"], "at": review["at"].isoformat()}
