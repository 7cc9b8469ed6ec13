"""Who is calling, and whether they may: identity from a bearer key, a page session or an SSO proxy.

- JSON API (``/api/...``, STOW-RS and FHIR beside it): ``Authorization: Bearer cxr_<id>_<secret>``.
  A session cookie is never taken there, so a browser's session cannot be ridden by a cross-site
  request to the API.
- Pages: a server-side session (``serve.sessions``) started at ``/login`` with an API key.
- ``proxy`` mode: an SSO reverse proxy's identity header, believed only with the proxy's shared
  secret (and from ``trusted_proxies``). Such a request to the API that is cross-site (the browser
  says so in ``Sec-Fetch-Site`` or ``Origin``) is refused: the proxy's cookie rides along with any
  request a page on another site makes.
- ``off``: the local demo only (settings refuse it otherwise); every page says so.

Verified keys and sessions are cached for ``key_cache_s`` per Ingress replica, so a revocation
takes effect within that time; refused tokens are remembered too, and malformed ones never reach
the database. While the database is down, an identity verified in the last ``key_stale_s`` keeps
working; one that cannot be checked gets 503 ``database_unavailable``, never a 401 or a 500.
Limits: a token bucket per identity (429), and one per client address for refused credentials.
``serve.routes`` calls ``Authenticator.admit`` for every route not declared public.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections import OrderedDict
from ipaddress import ip_address, ip_network
from urllib.parse import quote, urlsplit

from pymongo.errors import PyMongoError
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from serve.api_keys import parse_token
from serve.errors import ServiceError, Unavailable, error_response
from serve.identity import Identity
from serve.rate_limit import RateLimiter
from serve.sessions import SESSION_COOKIE, SessionCookies
from serve.settings import ServeSettings

DEMO_IDENTITY = Identity("demo-user (authentication off)", None, "admin", via="demo")
MAX_CACHED = 10_000
_PROXY_USER = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")


MACHINE_PREFIXES = ("/api/", "/dicomweb/", "/fhir/")  # bearer keys only; refusals as JSON, never a login page


def is_api(path: str) -> bool:
    return path.startswith(MACHINE_PREFIXES)


class RefusedCredentials(Exception):
    """Credentials were presented and are not valid (as opposed to none presented)."""


class Authenticator:
    def __init__(self, settings: ServeSettings, store):
        self.settings, self.store = settings, store
        self.cookies = SessionCookies(settings.session_secret, settings.session_hours * 3600)
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        self.refusals = RateLimiter(settings.failed_auth_per_minute)  # per client address
        self.proxies = [ip_network(c.strip(), strict=False) for c in settings.trusted_proxies.split(",") if c.strip()]
        self._cache: OrderedDict[str, tuple[float, Identity | None]] = OrderedDict()

    @property
    def off(self) -> bool:
        return self.settings.auth == "off"

    def _remember(self, cache_key: str, identity: Identity | None) -> None:
        self._cache[cache_key] = (time.monotonic() + self.settings.key_cache_s, identity)
        self._cache.move_to_end(cache_key)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)

    async def _cached(self, cache_key: str, lookup) -> Identity | None:
        hit = self._cache.get(cache_key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        try:
            identity = await lookup()
        except PyMongoError:  # through Ray as a RayTaskError subclass of the pymongo error
            if hit and hit[1] is not None and hit[0] + self.settings.key_stale_s > time.monotonic():
                return hit[1]
            raise
        # Refusals are remembered too: a random secret that failed once cannot become valid later.
        self._remember(cache_key, identity)
        return identity

    def forget(self, cookie: str | None) -> None:
        session_id = self.cookies.session_id(cookie)
        if session_id:
            self._cache.pop("s:" + session_id, None)

    async def verify_token(self, token: str) -> Identity | None:
        if parse_token(token) is None:  # malformed: refused here, without a database call
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        return await self._cached("t:" + digest, lambda: self.store.verify_key.remote(token))

    async def session_identity(self, cookie: str | None) -> Identity | None:
        session_id = self.cookies.session_id(cookie)
        if session_id is None:
            return None
        return await self._cached("s:" + session_id, lambda: self.store.session_identity.remote(session_id))

    def _from_trusted_proxy(self, request: Request) -> bool:
        secret = request.headers.get(self.settings.proxy_secret_header, "")
        if not secret or not hmac.compare_digest(secret.encode(), self.settings.proxy_secret.encode()):
            return False
        try:
            peer = ip_address(request.client.host) if request.client else None
        except ValueError:
            return False
        return peer is not None and any(peer in network for network in self.proxies)

    async def identify(self, request: Request) -> Identity | None:
        """The caller's identity; None when no credentials came; ``RefusedCredentials`` for bad ones."""
        if self.off:
            return DEMO_IDENTITY
        if self.settings.auth == "proxy" and self._from_trusted_proxy(request):
            user = request.headers.get(self.settings.proxy_user_header, "")
            if _PROXY_USER.fullmatch(user):
                return Identity(user, None, "clinician", via="proxy")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            identity = await self.verify_token(token.strip())
        elif not is_api(request.url.path) and request.cookies.get(SESSION_COOKIE):
            identity = await self.session_identity(request.cookies.get(SESSION_COOKIE))
        else:
            return None
        if identity is None:
            raise RefusedCredentials
        return identity

    def _cross_site(self, request: Request, identity: Identity) -> bool:
        """A browser-carried identity (proxy cookie) sent by another site's page to the API."""
        if identity.via not in ("proxy", "session") or not is_api(request.url.path):
            return False
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return True
        origin = request.headers.get("origin")
        return bool(origin) and urlsplit(origin).netloc != request.headers.get("host", "")

    async def admit(self, request: Request, permission: str) -> Response | None:
        """None when the request may proceed (its identity is then in ``request.state.identity``);
        otherwise the refusal to send: 401/login, 403, 429 or 503."""
        client = request.client.host if request.client else "-"
        try:
            identity = await self.identify(request)
        except RefusedCredentials:
            wait = self.refusals.take(client)
            return too_many(request, wait) if wait > 0 else challenge(request)
        except PyMongoError:
            return refusal(
                request,
                self._unavailable(
                    "database_unavailable", "the database cannot be reached to check your credentials; retry shortly"
                ),
            )
        except BackPressureError:
            return refusal(request, self._unavailable("overloaded", "the service is at capacity; retry shortly"))
        if identity is None:
            return challenge(request)
        if self._cross_site(request, identity):
            return refusal(request, ServiceError(403, "cross_site_request", "a request from another site's page"))
        wait = self.limiter.take(identity.key_id or identity.name, identity.rate_limit_per_minute)
        if wait > 0:
            return too_many(request, wait)
        request.state.identity = identity
        if not identity.may(permission):
            await self._record_denied(identity, request)
            return refusal(request, ServiceError(403, "forbidden", f"the {identity.role} role may not do this"))
        return None

    def charge(self, request: Request, extra: int) -> None:
        """Count ``extra`` more requests against the caller's rate limit (a batch counts each image);
        raises 429 when they exceed what is left."""
        if extra <= 0:
            return
        identity = identity_of(request)
        wait = self.limiter.take(identity.key_id or identity.name, identity.rate_limit_per_minute, extra)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ServiceError(429, "rate_limited", f"too many images; retry in {seconds} s", retry_after=seconds)

    def _unavailable(self, code: str, message: str) -> Unavailable:
        return Unavailable(503, code, message, self.settings.retry_after_database_s)

    async def _record_denied(self, identity: Identity, request: Request) -> None:
        try:
            await self.store.record_denied.remote(identity, f"{request.method} {request.url.path}")
        except Exception:  # the refusal stands whether or not it could be written down
            pass


def challenge(request: Request) -> Response:
    """401 for the API (Bearer challenge); the login page for a browser."""
    if is_api(request.url.path):
        response = error_response(ServiceError(401, "unauthorized", "send Authorization: Bearer <API key>"))
        response.headers["WWW-Authenticate"] = 'Bearer realm="cxr"'
        return response
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = f"/login?next={quote(target, safe='')}" if request.method == "GET" else "/login"
    if request.headers.get("hx-request") == "true":
        return Response(status_code=401, headers={"HX-Redirect": login})
    return RedirectResponse(login, 303)


def too_many(request: Request, wait: float) -> Response:
    seconds = max(1, math.ceil(wait))
    return refusal(
        request, ServiceError(429, "rate_limited", f"too many requests; retry in {seconds} s", retry_after=seconds)
    )


def refusal(request: Request, error: ServiceError) -> Response:
    """JSON for the API; a short plain-text page for a browser."""
    if is_api(request.url.path):
        return error_response(error)
    text = str(error)
    return Response(text[0].upper() + text[1:] + ".", error.status, media_type="text/plain", headers=error.headers())


def identity_of(request: Request) -> Identity:
    return request.state.identity
