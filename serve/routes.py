"""Routes declared once, beside their handlers, with what they need: ``@route(path, ...)``.

A handler's declaration says whether it is public (no identity needed) and whether it takes a
page form, whose CSRF token must match its cookie. ``build_routes`` turns an object's declared
handlers into Starlette routes and applies authentication and CSRF there, in one place, so no
handler checks either by hand. The OpenAPI test checks the API's table against ``openapi.yaml``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serve import csrf
from serve.authentication import Authenticator
from serve.errors import ServiceError
from serve.uploads import Upload

FormReader = Callable[[Request], Awaitable[Upload]]


@dataclass(frozen=True)
class RouteSpec:
    path: str
    methods: tuple[str, ...]
    public: bool = False  # served without an identity
    form: str | None = None  # the owner's method that reads this page form; its CSRF token is checked


def route(path: str, *methods: str, public: bool = False, form: str | None = None):
    """Declare a handler's route. With ``form``, the handler is called as ``handler(request, form)``
    once the form (read by the owner's method of that name) carries a valid CSRF token."""

    def declare(handler):
        handler.route_spec = RouteSpec(path, methods or ("GET",), public, form)
        return handler

    return declare


def declared(owner_type: type) -> list[tuple[str, RouteSpec]]:
    """(method name, spec) for each declared handler of a class, in source order."""
    return [(name, value.route_spec) for name, value in vars(owner_type).items() if hasattr(value, "route_spec")]


class RouteOwner:
    """What an object with declared routes provides: how its typed errors are answered, and (with
    page-form routes) how a refused form or a bad CSRF token is."""

    async def error_response(self, request: Request, error: ServiceError) -> Response:
        raise NotImplementedError

    async def form_refused(self, request: Request, error: ServiceError) -> Response:
        raise NotImplementedError

    async def forbidden(self, request: Request) -> Response:
        raise NotImplementedError


def _guarded(owner, handler, spec: RouteSpec, authenticator: Authenticator):
    async def endpoint(request: Request) -> Response:
        if not spec.public:
            refusal = await authenticator.admit(request)
            if refusal is not None:
                return refusal
        try:
            if spec.form is None:
                return await handler(request)
            try:
                form = await getattr(owner, spec.form)(request)
            except ServiceError as exc:
                return await owner.form_refused(request, exc)
            if not csrf.valid(request.cookies, form.fields.get(csrf.FIELD)):
                return await owner.forbidden(request)
            return await handler(request, form)
        except ServiceError as exc:
            return await owner.error_response(request, exc)

    endpoint.__name__ = handler.__name__
    return endpoint


def build_routes(owner, authenticator: Authenticator) -> list[Route]:
    return [
        Route(
            spec.path, _guarded(owner, getattr(owner, name), spec, authenticator), methods=list(spec.methods), name=name
        )
        for name, spec in declared(type(owner))
    ]
