"""A real SecantusDB server and the real Serve application, deployed from serve_config.yaml."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from pymongo import MongoClient

from serve.api_keys import ApiKeys
from serve.records import PredictionRecords
from tests.helpers import free_port
from tests.serve.browser import launch
from tests.serve.helpers import client

ROOT = Path(__file__).resolve().parents[2]


PSEUDONYM_KEY = "test-pseudonym-key"
KEY_CACHE_S = 2  # short, so that the revocation tests wait out the window instead of skipping it
# Refused credentials per client address: above what the suite's own 401 tests and schemathesis's
# invalid-credential probes send from 127.0.0.1 in a minute, in any order.
FAILED_AUTH_PER_MINUTE = 600


def deploy_config(checkpoint: Path, port: int, env: dict, user_config: dict | None = None) -> dict:
    """serve_config.yaml as shipped, pointed at a test checkpoint, port and environment."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["checkpoint"] = str(checkpoint)
    app["runtime_env"] = {"env_vars": env}
    for deployment in app["deployments"]:
        if deployment["name"] == "BatchedClassifier" and user_config:
            deployment["user_config"] = {**deployment.get("user_config", {}), **user_config}
    return config


def deploy(config: dict) -> None:
    """What `serve run serve_config.yaml` does: start Serve with the file's options, deploy its apps."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=True)


class Service:
    def __init__(self, base_url: str, checkpoint: Path, env: dict, port: int, api_key: str):
        self.base_url, self.checkpoint, self.env, self.port, self.api_key = base_url, checkpoint, env, port, api_key
        # Authentication is on, as in production: every request carries the suite's API key.
        self.http = client(base_url, timeout=120, headers={"Authorization": f"Bearer {api_key}"})
        self.anonymous = client(base_url, timeout=120)

    def predict(self, image: bytes, filename: str = "cxr.png", **fields) -> httpx.Response:
        data = {"patient_id": "P-0001", **{k: str(v) for k, v in fields.items()}}
        return self.http.post("/api/v1/predictions", data=data, files={"image": (filename, image, "image/png")})

    def redeploy(self, user_config: dict) -> None:
        deploy(deploy_config(self.checkpoint, self.port, self.env, user_config))


# Package scope: Serve's replicas hold most of the 2 CPUs, so they must be gone before
# tests elsewhere (Ray Train) ask the same cluster for workers.
@pytest.fixture(scope="package")
def service(ray_cluster, mongo_server, tiny_checkpoint):
    from ray import serve

    port = free_port()
    env = {
        "CXR_MONGODB_URI": mongo_server.uri,
        "CXR_MONGODB_DATABASE": "cxr_test",
        "CXR_MONGODB_TIMEOUT_MS": "1500",
        "CXR_AUTH": "api_key",
        "CXR_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "CXR_SESSION_SECRET": "test-session-secret-0123456789abcdef",
        "CXR_KEY_CACHE_S": str(KEY_CACHE_S),
        "CXR_FAILED_AUTH_PER_MINUTE": str(FAILED_AUTH_PER_MINUTE),
    }
    # The suite's own key, made the way an administrator does (`cxr keys create`), with a limit
    # high enough for the load tests; rate limiting is tested with keys of its own.
    _, api_key = ApiKeys(MongoClient(mongo_server.uri)["cxr_test"]).create("test-suite", "admin", 100_000)
    # A longer batch window than production so concurrent test requests reliably share batches.
    deploy(deploy_config(tiny_checkpoint, port, env, {"batch_wait_timeout_s": 0.2}))
    svc = Service(f"http://127.0.0.1:{port}", tiny_checkpoint, env, port, api_key)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if svc.http.get("/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    yield svc
    serve.shutdown()


@pytest.fixture(scope="session")
def db(mongo_server):
    return MongoClient(mongo_server.uri)["cxr_test"]


@pytest.fixture
def records(mongo_server):
    """A fresh database of prediction records on the real server, per test."""
    return PredictionRecords(mongo_server.uri, f"store_{uuid.uuid4().hex[:8]}", timeout_ms=1500)


@pytest.fixture()
def keys(service):
    """The service's API keys, managed as an administrator does (``cxr keys``): straight in the database."""
    return ApiKeys(MongoClient(service.env["CXR_MONGODB_URI"])["cxr_test"])


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium (tests/serve/browser.py), one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()
