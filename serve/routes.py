"""Routes declared once, beside their handlers, with what they need: ``@route(path, ..., needs=)``.

A declaration says which permission the route needs (``None``: public), how large its body may be,
and whether it takes a page form, whose CSRF token must match its cookie. ``build_routes`` turns an
object's declared handlers into Starlette routes and applies, in one place and in this order: the
body limit (413 before anything is read or parsed), authentication and the role's permission, and
the CSRF check. No handler does any of these by hand. The OpenAPI test checks the API's table
against ``openapi.yaml``, and the role test walks every route of both tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serve import csrf
from serve.authentication import Authenticator
from serve.errors import InputError, ServiceError
from serve.settings import ServeSettings
from serve.uploads import BodyTooLarge

UPLOAD_OVERHEAD = 512 * 1024  # an upload's few form fields and multipart framing, beyond the image itself


@dataclass(frozen=True)
class RouteSpec:
    path: str
    methods: tuple[str, ...]
    needs: str | None  # the permission a caller's role must hold; None: public
    form: str | None = None  # the owner's method that reads this page form; its CSRF token is checked
    upload: bool = False  # the body may be an image upload (else: a small form at most)
    batch: bool = False  # the body may hold up to max_batch_items images (max_batch_bytes in all)


def route(
    path: str, *methods: str, needs: str | None, form: str | None = None, upload: bool = False, batch: bool = False
):
    """Declare a handler's route. With ``form``, the handler is called as ``handler(request, form)``
    once the form (read by the owner's method of that name) carries a valid CSRF token."""

    def declare(handler):
        handler.route_spec = RouteSpec(path, methods or ("GET",), needs, form, upload or batch, batch)
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


def body_limit(spec: RouteSpec, settings: ServeSettings) -> int:
    if spec.batch:
        return settings.max_batch_bytes + UPLOAD_OVERHEAD
    return settings.max_upload_bytes + UPLOAD_OVERHEAD if spec.upload else settings.max_form_bytes


def too_large(spec: RouteSpec, limit: int) -> InputError:
    if spec.upload:
        what = "batch" if spec.batch else "upload"
        return InputError(413, "too_large", f"the {what} exceeds {limit - UPLOAD_OVERHEAD} bytes", "image")
    return InputError(413, "too_large", f"the request body exceeds {limit} bytes")


def bounded(request: Request, limit: int) -> Request:
    """The same request, whose body stops past ``limit`` bytes: a chunked body declares no length,
    so what arrives is counted and reading stops there (no parser ever spools more)."""
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise BodyTooLarge
        return message

    return Request(request.scope, receive)


def _declared_too_large(request: Request, limit: int) -> bool:
    declared = request.headers.get("content-length", "")
    return declared.isdigit() and int(declared) > limit


async def _refuse(owner, spec: RouteSpec, request: Request, error: ServiceError) -> Response:
    """A refusal in the words of the route's owner: the form's page for a page form, else its error."""
    if spec.form is not None:
        return await owner.form_refused(request, error)
    return await owner.error_response(request, error)


def _guarded(owner, handler, spec: RouteSpec, authenticator: Authenticator):
    limit = body_limit(spec, authenticator.settings)

    async def endpoint(request: Request) -> Response:
        if _declared_too_large(request, limit):  # refused before a byte of the body is read
            return await _refuse(owner, spec, request, too_large(spec, limit))
        request = bounded(request, limit)
        if spec.needs is not None:
            refused = await authenticator.admit(request, spec.needs)
            if refused is not None:
                return refused
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
        except BodyTooLarge:
            return await _refuse(owner, spec, request, too_large(spec, limit))
        except ServiceError as exc:
            return await owner.error_response(request, exc)

    endpoint.__name__ = handler.__name__
    return endpoint


def build_routes(owner, authenticator: Authenticator) -> list[Route]:
    """One Starlette route per path (several methods may share it, each with its own declaration),
    so a wrong method gets a 405 whose ``Allow`` lists every method the path has."""
    by_path: dict[str, dict[str, object]] = {}
    for name, spec in declared(type(owner)):
        endpoint = _guarded(owner, getattr(owner, name), spec, authenticator)
        for method in spec.methods:
            by_path.setdefault(spec.path, {})[method] = endpoint
    return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in by_path.items()]


def _by_method(handlers: dict[str, object]):
    if len(handlers) == 1:
        return next(iter(handlers.values()))

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint
