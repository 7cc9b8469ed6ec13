"""The service's typed errors: one HTTP status, one stable code and a message each.

The JSON API renders every one of them the same way (``error_body``); the pages put the
message beside the field it names. Nothing is stored for a request that ends in one.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.responses import JSONResponse


class ServiceError(Exception):
    """A request the service answers with a 4xx/5xx: ``{"error": {"code", "message", "field"?, ...}}``."""

    status = 400

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        details: dict | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.field = status, code, field
        self.details, self.retry_after = details or {}, retry_after

    def to_json(self) -> dict:
        body = {"code": self.code, "message": str(self)}
        if self.field:
            body["field"] = self.field
        return {"error": body | self.details}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class InputError(ServiceError):
    """Something the client sent is unusable; the client must change it."""


class InvalidRequest(ServiceError):
    """Every field's problem at once; the API reports the first, the pages show each beside its field."""

    def __init__(self, errors: list[InputError]):
        first = errors[0]
        super().__init__(first.status, first.code, str(first), first.field, first.details)
        self.errors = errors

    def triples(self) -> list[tuple[str | None, str, str]]:
        return [(e.field, e.code, str(e)) for e in self.errors]

    def page_status(self) -> int:
        """The most telling status for a page: any non-400 wins (413, 415, 422), else 400."""
        return max((e.status for e in self.errors), key=lambda s: (s != 400, s))


class Unavailable(ServiceError):
    """The service cannot answer this request now; the client should retry after ``retry_after`` s."""

    def __init__(self, status: int, code: str, message: str, retry_after: int):
        super().__init__(status, code, message, retry_after=retry_after)


class NotFound(ServiceError):
    def __init__(self, message: str):
        super().__init__(404, "not_found", message)


def error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.to_json(), exc.status, headers=exc.headers())


def no_route_error(method: str, status: int) -> ServiceError:
    """The router's own refusals (no such path, or not with this method) as the service's errors."""
    if status == 404:
        return NotFound("there is nothing at this address")
    if status == 405:
        return ServiceError(405, "method_not_allowed", f"{method} is not allowed at this address")
    return ServiceError(status, "http_error", HTTPStatus(status).phrase.lower())
