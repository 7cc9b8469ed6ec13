"""Operating the service: metrics, a database outage, rolling a new model in."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import torch

from cxr_model.checkpoint import load_network, save_checkpoint
from cxr_model.network import build_model
from cxr_model.onnx_runtime import export_onnx
from cxr_model.scope import GATE_FILE, LAYOUT_FILE
from tests.helpers import make_card
from tests.serve.helpers import chest_png


def test_prometheus_endpoint_exports_serve_and_app_metrics(service, ray_metrics_url):
    for i in range(3):
        assert service.predict(chest_png(200 + i), save="1").status_code == 200
    service.predict(b"not an image")
    wanted = [
        "ray_cxr_predictions_total",
        "ray_cxr_rejected_inputs_total",
        "ray_cxr_stage_seconds_bucket",
        "ray_cxr_batch_size_bucket",
        "ray_cxr_inference_seconds_bucket",
        "ray_cxr_model_info",
        "ray_serve_num_http_requests",
        # Exported every 2 s: wait for this test's own samples too, not only for the series names.
        'reason="not_an_image"',
        'stage="storage"',
        'stage="decode"',
    ]
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        text = httpx.get(ray_metrics_url, timeout=10).text
        if all(name in text for name in wanted):
            break
        time.sleep(2)
    missing = [name for name in wanted if name not in text]
    assert not missing, missing
    assert 'reason="not_an_image"' in text
    assert 'stage="storage"' in text and 'stage="decode"' in text


def test_database_outage_returns_the_prediction_marked_not_saved(service, mongo_server, db):
    request_id = f"outage-{uuid.uuid4().hex}"
    assert service.http.get("/api/v1/model").status_code == 200  # a clinician at work when the DB goes
    mongo_server.stop()
    try:
        # Their key was verified a moment ago and stays good; one never checked cannot be.
        unknown = service.anonymous.get("/api/v1/model", headers={"Authorization": "Bearer cxr_nokey_nosecret"})
        assert unknown.status_code == 503 and unknown.json()["error"]["code"] == "database_unavailable"
        assert unknown.headers["retry-after"] == "5"
        response = service.predict(chest_png(30), save="1", request_id=request_id)
        assert response.status_code == 200
        body = response.json()
        assert body["saved"] is False and body["prediction_id"] is None
        assert "database unavailable" in body["save_error"]
        assert body["top_label"] in body["probabilities"]
        ready = service.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
        pod_ready = service.http.get("/readyz", params={"checks": "model"})  # what the pods probe
        assert pod_ready.status_code == 200 and pod_ready.json()["checks"] == {"model": True}
        listing = service.http.get("/api/v1/patients/P-0001/predictions")
        assert listing.status_code == 503 and listing.headers["retry-after"] == "5"
        assert listing.json()["error"]["code"] == "database_unavailable"
    finally:
        mongo_server.start()
    # Nothing half-written: no record and no files for that request.
    assert db["predictions"].count_documents({"request_id": request_id}) == 0
    assert db["images.files"].count_documents({"metadata.request_id": request_id}) == 0
    # After recovery the same request saves, exactly once.
    retry = service.predict(chest_png(30), save="1", request_id=request_id).json()
    assert retry["saved"] is True
    assert db["predictions"].count_documents({"request_id": request_id}) == 1
    assert db["images.files"].count_documents({"metadata.request_id": request_id}) == 1  # the original


def test_model_roll_via_user_config_drops_no_requests(service, tmp_path):
    model, card = load_network(service.checkpoint)
    with torch.no_grad():
        model.head.bias.add_(0.5)
    card.version = "0.0.2-rolled"
    card.created_at = ""
    rolled = tmp_path / "rolled"
    save_checkpoint(model, card, rolled)
    # The out-of-scope gate travels with the checkpoint (its card names the file and its sha256).
    for gate in (GATE_FILE, LAYOUT_FILE):
        shutil.copy(Path(service.checkpoint) / gate, rolled / gate)
    export_onnx(rolled)  # with a verified export, runtime "auto" serves it with ONNX Runtime on CPU

    results, stop = [], threading.Event()

    def traffic():
        # Bounded: at most 60 requests per client, ended by `stop` well before that.
        for i in range(60):
            if stop.is_set():
                return
            response = service.predict(chest_png(300 + i))
            results.append((response.status_code, response.json().get("model", {}).get("version")))

    clients = [threading.Thread(target=traffic) for _ in range(2)]
    for client in clients:
        client.start()
    time.sleep(1.0)
    try:
        service.redeploy({"checkpoint": str(rolled), "batch_wait_timeout_s": 0.2})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(v == "0.0.2-rolled" for _, v in results):
            time.sleep(0.5)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert results and all(status == 200 for status, _ in results), results
    versions = [v for _, v in results]
    assert versions[0] == "0.0.1" and versions[-1] == "0.0.2-rolled"
    assert service.http.get("/api/v1/model").json()["version"] == "0.0.2-rolled"
    after = service.predict(chest_png(999)).json()["model"]
    assert after["version"] == "0.0.2-rolled" and after["runtime"] == "onnx"
    service.redeploy({"checkpoint": str(service.checkpoint), "batch_wait_timeout_s": 0.2})


def _wait_for_version(service, version: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = service.predict(chest_png(7)).json()
        if body["model"]["version"] == version:
            return body
        time.sleep(0.5)
    raise AssertionError(f"version {version} never served")


def test_multilabel_checkpoint_serves_per_label_probabilities(service, tmp_path):
    model = build_model("densenet121", 3, "none")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([2.0, -2.0, 0.0]))  # sigmoid: 0.881, 0.119, 0.5
    card = make_card(labels=("Effusion", "Mass", "Nodule"), task="multilabel", thresholds=[0.5, 0.1, 0.6])
    card.version = "ml-1"
    save_checkpoint(model, card, tmp_path / "ml")
    try:
        service.redeploy({"checkpoint": str(tmp_path / "ml"), "batch_wait_timeout_s": 0.2})
        body = _wait_for_version(service, "ml-1")
        assert body["model"]["task"] == "multilabel"
        probs = body["probabilities"]
        assert probs["Effusion"] == pytest.approx(0.8808, abs=1e-3) and probs["Nodule"] == pytest.approx(0.5, abs=1e-3)
        assert sum(probs.values()) != pytest.approx(1.0, abs=1e-2)
        assert body["positives"] == ["Effusion", "Mass"]  # 0.88 >= 0.5, 0.12 >= 0.1, 0.5 < 0.6
    finally:
        service.redeploy({"checkpoint": str(service.checkpoint), "batch_wait_timeout_s": 0.2})
        _wait_for_version(service, "0.0.1")
