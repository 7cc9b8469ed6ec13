"""Model monitoring for people: ``/monitoring`` (page) and ``GET /api/v1/monitoring/agreement``.

How the model agrees with its radiologists' reviews, per model version and label (``serve.agreement``),
with 95% intervals; the same figures are Prometheus gauges (``cxr_review_*``), refreshed by every
ResultStore replica.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve.errors import ServiceError, error_response
from serve.identity import MODEL
from serve.page_base import PageBase
from serve.routes import route


class Monitoring(PageBase):
    async def error_response(self, request: Request, error: ServiceError) -> Response:
        if request.url.path.startswith("/api/"):
            return error_response(error)
        return await super().error_response(request, error)

    @route("/api/v1/monitoring/agreement", needs=MODEL)
    async def agreement_api(self, request: Request) -> Response:
        return JSONResponse({"models": await self.store.agreement.remote()})

    @route("/monitoring", needs=MODEL)
    async def monitoring_page(self, request: Request) -> Response:
        try:
            models = await self.store.agreement.remote()
        except Exception:
            return await self._message(request, 503, "Monitoring unavailable", "The database cannot be reached.")
        return await self._page(request, "monitoring.html", None, models=models)
