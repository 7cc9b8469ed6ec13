"""Authentication and rate limiting in front of every non-public route (an ASGI middleware).

- JSON API (``/api/...``): ``Authorization: Bearer cxr_<id>_<secret>``; cookies are ignored there,
  so a browser's session can never be ridden by a cross-site request to the API.
- Pages: a signed session cookie set by ``/login`` (paste an API key), re-checked against the key
  store so that revoking the key ends its sessions.
- ``proxy`` mode: an SSO reverse proxy's identity header, believed only from ``trusted_proxies``.
- ``off``: the local demo only (settings refuse it otherwise); every page says so.

Verified keys are cached for ``CACHE_S`` per Ingress replica, so a revocation takes effect
within that time. While the database is down, an identity verified in the last ``STALE_S``
keeps working (predictions are still served, marked not saved); one that cannot be checked gets
503 ``database_unavailable``, never a 401 or a 500. Each identity gets a token bucket: over the
limit is a 429 with Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections import OrderedDict
from ipaddress import ip_address, ip_network
from urllib.parse import quote

from pymongo.errors import PyMongoError
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from serve.access import Identity
from serve.settings import ServeSettings

SESSION_COOKIE = "cxr_session"
CACHE_S = 30.0
STALE_S = 900.0
DEMO_IDENTITY = Identity("demo-user (authentication off)", None, "admin")
PUBLIC_PATHS = ("/healthz", "/readyz", "/login", "/logout", "/api/v1/openapi.json")
PUBLIC_PREFIXES = ("/static/",)
_PROXY_USER = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_api(path: str) -> bool:
    return path.startswith("/api/")


class RateLimiter:
    """A token bucket per identity: ``per_minute`` requests, refilled continuously, bounded memory."""

    def __init__(self, per_minute: int, max_identities: int = 10_000):
        self.per_minute, self.max_identities = per_minute, max_identities
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, who: str, per_minute: int | None = None) -> float:
        """0 when allowed; otherwise the seconds until the next request would be."""
        rate = float(per_minute or self.per_minute)
        now = time.monotonic()
        tokens, stamp = self.buckets.pop(who, (rate, now))
        tokens = min(rate, tokens + (now - stamp) * rate / 60.0)
        if tokens >= 1.0:
            self.buckets[who] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self.buckets[who] = (tokens, now)
            wait = (1.0 - tokens) * 60.0 / rate
        while len(self.buckets) > self.max_identities:
            self.buckets.popitem(last=False)
        return wait


class Sessions:
    """``<key id>.<expiry>.<hmac>`` cookies; the key id is re-checked against the store on use."""

    def __init__(self, secret: str, hours: float):
        self.secret, self.seconds = secret.encode(), int(hours * 3600)

    def _sign(self, payload: str) -> str:
        return hmac.new(self.secret, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, key_id: str) -> str:
        payload = f"{key_id}.{int(time.time()) + self.seconds}"
        return f"{payload}.{self._sign(payload)}"

    def key_id(self, cookie: str | None) -> str | None:
        parts = (cookie or "").split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        payload = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(parts[2], self._sign(payload)) or int(parts[1]) < time.time():
            return None
        return parts[0]

    def cookie_header(self, value: str, secure: bool) -> str:
        return (f"{SESSION_COOKIE}={value}; Path=/; Max-Age={self.seconds}; SameSite=Strict; HttpOnly"
                + ("; Secure" if secure else ""))

    @staticmethod
    def clear_header() -> str:
        return f"{SESSION_COOKIE}=; Path=/; Max-Age=0; SameSite=Strict; HttpOnly"


class Access:
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
            if hit and hit[0] + STALE_S > time.monotonic():
                return hit[1]
            raise
        if identity is not None:  # misses are not cached: a key created a moment ago must work
            self._cache[cache_key] = (time.monotonic() + CACHE_S, identity)
            while len(self._cache) > 10_000:
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


def challenge(request: Request) -> Response:
    """401 for the API (Bearer challenge); the login page for a browser."""
    if is_api(request.url.path):
        return JSONResponse({"error": {"code": "unauthorized", "message": "send Authorization: Bearer <API key>"}},
                            401, headers={"WWW-Authenticate": 'Bearer realm="cxr"'})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = f"/login?next={quote(target, safe='')}" if request.method == "GET" else "/login"
    if request.headers.get("hx-request") == "true":
        return Response(status_code=401, headers={"HX-Redirect": login})
    return RedirectResponse(login, 303)


def key_store_unavailable(request: Request) -> Response:
    message = "the database cannot be reached to check your key; retry shortly"
    if is_api(request.url.path):
        return JSONResponse({"error": {"code": "database_unavailable", "message": message}}, 503,
                            headers={"Retry-After": "5"})
    return Response(f"Service unavailable: {message}.", 503, media_type="text/plain", headers={"Retry-After": "5"})


def too_many(request: Request, wait: float) -> Response:
    seconds = str(max(1, math.ceil(wait)))
    if is_api(request.url.path):
        return JSONResponse({"error": {"code": "rate_limited",
                                       "message": f"too many requests for this key; retry in {seconds} s"}},
                            429, headers={"Retry-After": seconds})
    return Response(f"Too many requests. Wait {seconds} seconds and try again.", 429,
                    media_type="text/plain", headers={"Retry-After": seconds})


class Authentication:
    """ASGI middleware: public routes pass; others need an identity and a token from its bucket."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            identity = await self.access.identify(request)
        except PyMongoError:
            await key_store_unavailable(request)(scope, receive, send)
            return
        if identity is None:
            await challenge(request)(scope, receive, send)
            return
        wait = self.access.limiter.take(identity.key_id or identity.name, identity.rate_limit_per_minute)
        if wait > 0:
            await too_many(request, wait)(scope, receive, send)
            return
        scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)


def identity_of(request: Request) -> Identity:
    return request.state.identity
