"""``PageBase``: what every owner of HTML pages shares: rendering a full page or its htmx partial
with the globals each page needs (notice, user, CSRF token), and plain message pages for errors."""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from cxr_model.annotate import DEMO_NOTICE, NOTICE
from serve import csrf
from serve.authentication import Authenticator
from serve.errors import ServiceError
from serve.predictions import PredictionService
from serve.routes import RouteOwner
from serve.uploads import Upload, read_small_form
from ui.views import PageRenderer, is_htmx

FORBIDDEN = "This form has expired or did not come from this site. Reload the page and try again."


def secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


class PageBase(RouteOwner):
    def __init__(self, predictions: PredictionService, store: DeploymentHandle, authenticator: Authenticator):
        self.predictions, self.store, self.authenticator = predictions, store, authenticator
        self.settings = predictions.settings
        self.renderer = PageRenderer(NOTICE, DEMO_NOTICE)

    async def _synthetic_demo(self) -> bool:
        try:
            return bool((await self.predictions.card()).synthetic_demo)
        except Exception:  # the banner must not take the page down with the model
            return False

    async def _page(self, request: Request, full: str, partial: str | None, status: int = 200, **context) -> Response:
        template = partial if partial and is_htmx(request.headers) else full
        context["synthetic_demo"] = await self._synthetic_demo()
        context["csrf_token"], new_token = csrf.token_for(request.cookies)
        context["auth_off"] = self.authenticator.off
        identity = getattr(request.state, "identity", None)
        context["user"] = identity.name if identity is not None and not self.authenticator.off else None
        context["identity"] = identity
        headers = {"Cache-Control": "no-store", "Vary": "HX-Request"}  # pages show patient data
        response = HTMLResponse(self.renderer.render(template, **context), status, headers=headers)
        if new_token:
            response.headers.append("set-cookie", csrf.cookie_header(context["csrf_token"], secure(request)))
        return response

    async def _message(self, request: Request, status: int, title: str, message: str) -> Response:
        return await self._page(request, "message.html", None, status, title=title, message=message)

    async def error_response(self, request: Request, error: ServiceError) -> Response:
        title = {404: "Not found", 405: "Method not allowed"}.get(error.status, "Request refused")
        return await self._message(request, error.status, title, str(error))

    async def form_refused(self, request: Request, error: ServiceError) -> Response:
        return await self._message(request, error.status, "Form refused", str(error))

    async def forbidden(self, request: Request) -> Response:
        return await self._message(request, 403, "Form expired", FORBIDDEN)

    async def small_form(self, request: Request) -> Upload:
        return await read_small_form(request)
