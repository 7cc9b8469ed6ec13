"""``Ingress``: the Starlette app in front of the classifier and the store.

It assembles the JSON API (``serve.api``), the pages (``serve.pages``), STOW-RS (``serve.dicomweb``)
and FHIR (``serve.fhir``) from their declared routes, the static files, the security headers, and
one rendering per error type. Uploads are decoded and validated here (never in the batch), then
sent to ``BatchedClassifier`` as grey levels at the model's input size.
"""

from __future__ import annotations

from pymongo.errors import PyMongoError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from serve.api import Api
from serve.authentication import Authenticator, is_api, refusal
from serve.dicomweb import DicomWeb
from serve.errors import Unavailable, error_response, no_route_error
from serve.fhir import Fhir
from serve.monitoring import Monitoring
from serve.pages import Pages
from serve.predictions import PredictionService
from serve.reading import Reading
from serve.routes import build_routes
from serve.security_headers import SecurityHeaders
from serve.settings import ServeSettings
from ui.views import STATIC_DIR


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, classifier: DeploymentHandle, store: DeploymentHandle, settings: ServeSettings):
        self.settings = settings = settings.with_own_secrets()
        self.predictions = PredictionService(classifier, store, settings)
        self.authenticator = Authenticator(settings, store)
        self.api = Api(self.predictions, store, self.authenticator)
        self.pages = Pages(self.predictions, store, self.authenticator)
        self.dicomweb = DicomWeb(self.predictions, self.authenticator)
        self.fhir = Fhir(self.predictions, store)
        self.reading = Reading(self.predictions, store, self.authenticator)
        self.monitoring = Monitoring(self.predictions, store, self.authenticator)

    def __serve_build_asgi_app__(self) -> Starlette:
        owners = (self.api, self.pages, self.dicomweb, self.fhir, self.reading, self.monitoring)
        routes = [route for owner in owners for route in build_routes(owner, self.authenticator)]
        return Starlette(
            routes=routes + [Mount("/static", StaticFiles(directory=STATIC_DIR))],
            exception_handlers={
                HTTPException: self.no_route,
                PyMongoError: self.database_unavailable,
                BackPressureError: self.busy,
            },
            middleware=[Middleware(SecurityHeaders)],
        )

    async def no_route(self, request: Request, exc: HTTPException) -> Response:
        """No route for this path (404), or not for this method (405, with ``Allow``): the API's JSON
        error for machine paths, a page like every other for people (Starlette's is bare text)."""
        error = no_route_error(request.method, exc.status_code)
        if is_api(request.url.path):
            response = error_response(error)
        else:
            response = await self.pages.error_response(request, error)
        response.headers.update(exc.headers or {})
        return response

    async def busy(self, request: Request, exc: Exception) -> Response:
        # A store (or classifier) queue is full: a fast refusal with Retry-After, never a 500.
        return refusal(
            request,
            Unavailable(
                503, "overloaded", "the service is at capacity; retry shortly", self.settings.retry_after_overloaded_s
            ),
        )

    async def database_unavailable(self, request: Request, exc: Exception) -> Response:
        # Store calls raise through Ray as RayTaskError subclasses of the pymongo error.
        return refusal(
            request,
            Unavailable(
                503,
                "database_unavailable",
                "the database cannot be reached; retry shortly",
                self.settings.retry_after_database_s,
            ),
        )
