"""Proxy-mode identity, attacked from the client's side: the SSO header is believed only with the
proxy's shared secret, from a trusted peer; and a browser-carried identity is not accepted from
another site's page. Real HTTP semantics through httpx's ASGI transport; no Ray needed (the proxy
path never asks the key store). The same attacks over the real Serve app are in test_security.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve.authentication import Authenticator, identity_of
from serve.identity import MODEL
from serve.settings import ServeSettings

PROXY_NETWORK = "10.1.2.0/24"
SECRET = "proxy-shared-secret-0123456789abcdef"
PROXY = {"X-CXR-Proxy-Secret": SECRET}


def app() -> Starlette:
    settings = ServeSettings(auth="proxy", trusted_proxies=PROXY_NETWORK, proxy_secret=SECRET, session_secret="s" * 32)
    authenticator = Authenticator(settings, store=None)

    async def whoami(request: Request):
        refusal = await authenticator.admit(request, MODEL)
        return refusal or JSONResponse({"user": identity_of(request).name})

    return Starlette(routes=[Route("/api/v1/whoami", whoami, methods=["GET", "POST"])])


async def call(peer: str, headers: dict, method: str = "GET") -> httpx.Response:
    transport = httpx.ASGITransport(app=app(), client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://cxr") as http:
        return await http.request(method, "/api/v1/whoami", headers=headers)


@pytest.mark.parametrize(
    "peer, headers",
    [
        ("127.0.0.1", {"X-Forwarded-User": "dr-admin"}),  # a local process posing as the proxy
        ("10.1.2.3", {"X-Forwarded-User": "dr-admin"}),  # the proxy's address (XFF-rewritten), no secret
        ("10.1.2.3", {"X-Forwarded-User": "dr-admin", "X-CXR-Proxy-Secret": "guess"}),  # a wrong secret
        ("10.9.9.9", {"X-Forwarded-User": "dr-admin", **PROXY}),  # a leaked secret, from outside the CIDR
        ("10.1.2.3", {"X-Forwarded-User": "dr admin; role=admin", **PROXY}),  # a malformed user
        ("10.1.2.3", PROXY),  # the trusted proxy without the header
    ],
)
def test_the_identity_header_is_ignored_unless_the_proxy_proves_itself(peer, headers):
    response = asyncio.run(call(peer, headers))
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


def test_the_trusted_proxy_s_header_names_the_user():
    response = asyncio.run(call("10.1.2.3", {"X-Forwarded-User": "dr-admin", **PROXY}))
    assert response.status_code == 200 and response.json() == {"user": "dr-admin"}


@pytest.mark.parametrize(
    "method, browser_headers",
    [
        ("POST", {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}),
        ("GET", {"Sec-Fetch-Site": "cross-site"}),  # a GET writes view/search audit entries in the user's name
        ("POST", {"Origin": "https://evil.example"}),  # an older browser: Origin only
        ("POST", {"Sec-Fetch-Site": "same-site"}),  # a sibling subdomain is another site to us
    ],
)
def test_a_proxy_identity_is_refused_on_a_request_from_another_site(method, browser_headers):
    headers = {"X-Forwarded-User": "dr-admin", **PROXY, **browser_headers}
    response = asyncio.run(call("10.1.2.3", headers, method))
    assert response.status_code == 403 and response.json()["error"]["code"] == "cross_site_request"


def test_a_proxy_identity_from_our_own_pages_is_accepted():
    headers = {"X-Forwarded-User": "dr-admin", **PROXY, "Sec-Fetch-Site": "same-origin", "Origin": "http://cxr"}
    assert asyncio.run(call("10.1.2.3", headers, "POST")).status_code == 200


def test_proxy_mode_without_a_long_shared_secret_is_refused_at_start():
    with pytest.raises(ValueError, match="CXR_PROXY_SECRET"):
        ServeSettings(auth="proxy", trusted_proxies=PROXY_NETWORK, proxy_secret="short")


class BusyStore:
    """A store deployment whose queue is full: every call is refused by Serve's router at once."""

    class _Method:
        def remote(self, *args):
            from ray.serve.exceptions import BackPressureError

            raise BackPressureError(num_queued_requests=64, max_queued_requests=64)

    verify_key = session_identity = _Method()


def test_a_busy_key_store_is_a_503_with_retry_after_never_a_500():
    settings = ServeSettings(session_secret="s" * 32)
    authenticator = Authenticator(settings, store=BusyStore())

    async def whoami(request: Request):
        return await authenticator.admit(request, MODEL) or JSONResponse({})

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=Starlette(routes=[Route("/api/v1/whoami", whoami)]))
        async with httpx.AsyncClient(transport=transport, base_url="http://cxr") as http:
            return await http.get("/api/v1/whoami", headers={"Authorization": "Bearer cxr_abc_def"})

    response = asyncio.run(go())
    assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
    assert int(response.headers["retry-after"]) >= 1
