"""Who is calling, and whether they may: identity from a bearer key, a page session or an SSO proxy.

- JSON API (``/api/...``): ``Authorization: Bearer cxr_<id>_<secret>``; cookies are ignored there,
  so a browser's session can never be ridden by a cross-site request to the API.
- Pages: a signed session cookie set by ``/login`` (paste an API key), re-checked against the key
  store so that revoking the key ends its sessions.
- ``proxy`` mode: an SSO reverse proxy's identity header, believed only from ``trusted_proxies``.
- ``off``: the local demo only (settings refuse it otherwise); every page says so.

Verified keys are cached for ``key_cache_s`` per Ingress replica, so a revocation takes effect
within that time. While the database is down, an identity verified in the last ``key_stale_s``
keeps working (predictions are still served, marked not saved); one that cannot be checked gets
503 ``database_unavailable``, never a 401 or a 500. Each identity gets a token bucket: over the
limit is a 429 with Retry-After. ``serve.routes`` applies ``Authenticator.admit`` to every route
not declared public.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict
from ipaddress import ip_address, ip_network
from urllib.parse import quote

from pymongo.errors import PyMongoError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from serve.errors import ServiceError, Unavailable, error_response
from serve.identity import Identity
from serve.rate_limit import RateLimiter
from serve.sessions import SESSION_COOKIE, Sessions
from serve.settings import ServeSettings

DEMO_IDENTITY = Identity("demo-user (authentication off)", None, "admin")
MAX_CACHED_IDENTITIES = 10_000
_PROXY_USER = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")


def is_api(path: str) -> bool:
    return path.startswith("/api/")


class Authenticator:
    """Resolves a request's identity (or None) and applies the rate limit."""

    def __init__(self, settings: ServeSettings, store):
        self.settings, self.store = settings, store
        self.sessions = Sessions(settings.session_secret, settings.session_hours)
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        self.proxies = [ip_network(c.strip(), strict=False) for c in settings.trusted_proxies.split(",") if c.strip()]
        self._cache: OrderedDict[str, tuple[float, Identity]] = OrderedDict()

    @property
    def off(self) -> bool:
        return self.settings.auth == "off"

    async def _cached(self, cache_key: str, lookup) -> Identity | None:
        hit = self._cache.get(cache_key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        try:
            identity = await lookup()
        except PyMongoError:  # through Ray as a RayTaskError subclass of the pymongo error
            if hit and hit[0] + self.settings.key_stale_s > time.monotonic():
                return hit[1]
            raise
        if identity is not None:  # misses are not cached: a key created a moment ago must work
            self._cache[cache_key] = (time.monotonic() + self.settings.key_cache_s, identity)
            while len(self._cache) > MAX_CACHED_IDENTITIES:
                self._cache.popitem(last=False)
        return identity

    async def verify_token(self, token: str) -> Identity | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        return await self._cached("t:" + digest, lambda: self.store.verify_key.remote(token))

    async def session_identity(self, cookie: str | None) -> Identity | None:
        key_id = self.sessions.key_id(cookie)
        if key_id is None:
            return None
        return await self._cached("s:" + key_id, lambda: self.store.key_identity.remote(key_id))

    def _from_trusted_proxy(self, request: Request) -> bool:
        try:
            peer = ip_address(request.client.host) if request.client else None
        except ValueError:
            return False
        return peer is not None and any(peer in network for network in self.proxies)

    async def identify(self, request: Request) -> Identity | None:
        if self.off:
            return DEMO_IDENTITY
        if self.settings.auth == "proxy" and self._from_trusted_proxy(request):
            user = request.headers.get(self.settings.proxy_user_header, "")
            if _PROXY_USER.fullmatch(user):
                return Identity(user, None, "clinician")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return await self.verify_token(token.strip())
        if not is_api(request.url.path):  # cookies authenticate pages only, never the JSON API
            return await self.session_identity(request.cookies.get(SESSION_COOKIE))
        return None

    async def admit(self, request: Request) -> Response | None:
        """None when the request may proceed (its identity is then in ``request.state.identity``);
        otherwise the refusal to send: 401/login, 429 or 503."""
        try:
            identity = await self.identify(request)
        except PyMongoError:
            return refusal(
                request,
                Unavailable(
                    503,
                    "database_unavailable",
                    "the database cannot be reached to check your key; retry shortly",
                    self.settings.retry_after_database_s,
                ),
            )
        if identity is None:
            return challenge(request)
        wait = self.limiter.take(identity.key_id or identity.name, identity.rate_limit_per_minute)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return refusal(
                request,
                ServiceError(
                    429, "rate_limited", f"too many requests for this key; retry in {seconds} s", retry_after=seconds
                ),
            )
        request.state.identity = identity
        return None


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


def refusal(request: Request, error: ServiceError) -> Response:
    """JSON for the API; a short plain-text page for a browser."""
    if is_api(request.url.path):
        return error_response(error)
    text = str(error)
    return Response(text[0].upper() + text[1:] + ".", error.status, media_type="text/plain", headers=error.headers())


def identity_of(request: Request) -> Identity:
    return request.state.identity
