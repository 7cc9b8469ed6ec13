"""Proxy-mode identity, attacked from the client's side: the SSO header is believed only when the
TCP peer is a trusted proxy. Real HTTP semantics through httpx's ASGI transport, no Ray needed
(the proxy path never asks the key store)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve.authentication import Authenticator, identity_of
from serve.settings import ServeSettings

PROXY_NETWORK = "10.1.2.0/24"


def app() -> Starlette:
    settings = ServeSettings(auth="proxy", trusted_proxies=PROXY_NETWORK, session_secret="s" * 32)
    authenticator = Authenticator(settings, store=None)

    async def whoami(request: Request):
        refusal = await authenticator.admit(request)
        return refusal or JSONResponse({"user": identity_of(request).name})

    return Starlette(routes=[Route("/api/v1/whoami", whoami)])


async def call(peer: str, headers: dict) -> httpx.Response:
    transport = httpx.ASGITransport(app=app(), client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://cxr") as http:
        return await http.get("/api/v1/whoami", headers=headers)


@pytest.mark.parametrize(
    "peer, headers",
    [
        ("127.0.0.1", {"X-Forwarded-User": "dr-admin"}),  # a local process posing as the proxy
        ("10.9.9.9", {"X-Forwarded-User": "dr-admin"}),  # another pod, outside the proxies' CIDR
        ("127.0.0.1", {"X-Forwarded-User": "dr-admin", "X-Forwarded-For": "10.1.2.3"}),  # a forged hop
        ("10.1.2.3", {"X-Forwarded-User": "dr admin; role=admin"}),  # the trusted proxy, a malformed user
        ("10.1.2.3", {}),  # the trusted proxy without the header
    ],
)
def test_the_identity_header_is_ignored_unless_a_trusted_proxy_sends_it(peer, headers):
    response = asyncio.run(call(peer, headers))
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


def test_the_trusted_proxy_s_header_names_the_user():
    response = asyncio.run(call("10.1.2.3", {"X-Forwarded-User": "dr-admin"}))
    assert response.status_code == 200 and response.json() == {"user": "dr-admin"}
