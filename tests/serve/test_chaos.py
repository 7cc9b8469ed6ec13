"""Chaos on loopback, bounded in time: a Classifier replica killed under load, the database
stopped in the middle of saves, and a burst at ten times capacity.

Named to run after the other service tests (it restarts replicas and redeploys) and before the
log scan (which then also covers what these tests logged).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import psutil
import pytest

from serve.orphans import sweep_orphans
from serve.records import PredictionRecords
from tests.serve.conftest import deploy, deploy_config
from tests.serve.helpers import SteadyLoad, chest_png, metric_total, replica_pids, wait_until

CLASSIFIER, INGRESS = "BatchedClassifier", "Ingress"
BATCH_HOLD_S = 3.0


def test_killing_a_classifier_replica_under_steady_load_keeps_99_percent_and_recovers(service):
    (victim,) = wait_until(lambda: replica_pids(CLASSIFIER), 60, "a running classifier replica")
    with SteadyLoad(service, "P-CHAOS-1") as load:
        os.kill(victim, signal.SIGKILL)
        # Recovery: a new replica process serves, and traffic after it keeps flowing.
        wait_until(lambda: replica_pids(CLASSIFIER) - {victim}, 120, "a replacement replica process")
        after_replacement = load.more(20, "traffic through the replacement")
    # Requests queued while no replica lived may all finish after the replacement is seen, so
    # only the traffic after it is asserted: it flows, and it ends in success.
    assert after_replacement[-10:] == [200] * 10, after_replacement
    assert load.success_rate >= 0.99, (load.success_rate, sorted(set(load.statuses)))
    assert service.predict(chest_png(4242)).status_code == 200


def test_a_prediction_whose_replica_dies_mid_batch_is_retried_and_counted(service, ray_metrics_url):
    """A request already accepted by a replica (waiting in its batch) when the replica dies: Serve's
    router cannot re-route it, so the Ingress retries it on the replacement and counts the retry."""

    def retries() -> float:
        return metric_total(ray_metrics_url, "ray_cxr_prediction_retries_total", reason="replica_gone")

    retried_before = retries()
    service.redeploy({"batch_wait_timeout_s": BATCH_HOLD_S})  # a lone request now waits in the replica
    try:
        (victim,) = wait_until(lambda: replica_pids(CLASSIFIER), 60, "a running classifier replica")
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(service.predict, chest_png(4343), patient_id="P-CHAOS-5")
            time.sleep(BATCH_HOLD_S / 2)  # accepted, and held in the batch
            os.kill(victim, signal.SIGKILL)
            response = answer.result(timeout=120)
    finally:
        service.redeploy({"batch_wait_timeout_s": 0.2})
    assert response.status_code == 200, response.text
    # Counted by the Ingress that retried it (Ray exports application metrics every 2 s here).
    wait_until(lambda: retries() > retried_before, 60, "the retry counter to rise")


def test_a_redeploy_that_replaces_the_classifier_drains_in_flight_requests(service):
    """Stopping replicas finish their batches (graceful shutdown); nothing in flight is dropped."""
    old = wait_until(lambda: replica_pids(CLASSIFIER), 60, "a running classifier replica")
    config = deploy_config(service.checkpoint, service.port, service.env, {"batch_wait_timeout_s": 0.2})
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == CLASSIFIER:  # a changed actor option means new replica processes
            deployment["ray_actor_options"]["num_cpus"] = 0.7
    try:
        with SteadyLoad(service, "P-CHAOS-4") as load:
            deploy(config)
            wait_until(lambda: replica_pids(CLASSIFIER) - old, 120, "the new replica")
            load.more(20, "traffic through the new replica")
    finally:
        service.redeploy({"batch_wait_timeout_s": 0.2})
    assert set(load.statuses) == {200}, sorted(set(load.statuses))
    wait_until(lambda: service.http.get("/readyz").status_code == 200, 120, "ready after restoring the config")


def _complete(db, file_id) -> bool:
    """A GridFS file whose document and every chunk are present."""
    doc = db["images.files"].find_one({"_id": file_id})
    if doc is None:
        return False
    stored = sum(len(c["data"]) for c in db["images.chunks"].find({"files_id": file_id}, {"data": 1}))
    return stored == doc["length"]


def test_stopping_the_database_mid_save_leaves_no_broken_record_and_a_retry_saves_once(service, mongo_server, db):
    request_ids = [f"chaos-save-{uuid.uuid4().hex}" for _ in range(18)]
    answers: dict[str, dict] = {}
    ready_during_outage: list[int] = []

    def save(request_id: str) -> None:
        response = service.predict(
            chest_png(hash(request_id) % 1000), save="1", request_id=request_id, patient_id="P-CHAOS-2"
        )
        assert response.status_code == 200, response.text  # the prediction is served either way
        answers[request_id] = response.json()

    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(save, request_id) for request_id in request_ids]
            wait_until(lambda: len(answers) >= 3, 120, "the first saves")
            mongo_server.stop()  # while the other saves are on their way
            ready_during_outage.append(service.http.get("/readyz").status_code)
            for future in futures:
                future.result()
    finally:
        if mongo_server.process.poll() is not None:
            mongo_server.start()
    assert ready_during_outage == [503]
    saved = {r for r, body in answers.items() if body["saved"]}
    assert len(saved) >= 3 and len(saved) < len(request_ids)  # the outage really cut through the saves
    for request_id, body in answers.items():
        if not body["saved"]:
            assert body["prediction_id"] is None and "database unavailable" in body["save_error"]
    # No record points at a missing or partial file.
    records = list(db["predictions"].find({"request_id": {"$in": request_ids}}))
    assert {r["request_id"] for r in records} >= saved
    for record in records:
        assert all(_complete(db, file_id) for file_id in record["files"].values()), record["_id"]
    # The sweep (the store runs it every CXR_ORPHAN_SWEEP_INTERVAL_S; here at once, all saves being
    # over) leaves only files that a record names.
    sweep_orphans(PredictionRecords(mongo_server.uri, "cxr_test"), timedelta(0))
    owners = {r["_id"] for r in records}
    files = list(db["images.files"].find({"metadata.request_id": {"$in": request_ids}}))
    assert all(f["metadata"]["prediction_id"] in owners for f in files)
    # Retrying every request after recovery stores each exactly once.
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(save, request_ids))
    assert all(answers[r]["saved"] for r in request_ids)
    for request_id in request_ids:
        assert db["predictions"].count_documents({"request_id": request_id}) == 1
        assert db["images.files"].count_documents({"metadata.request_id": request_id}) == 1  # the original


async def _burst(service, count: int) -> list[tuple[int, float, str | None]]:
    """``count`` uploads at once; (status, seconds, Retry-After) each; refusals must say overloaded."""
    image = chest_png(77)

    async def one(http: httpx.AsyncClient):
        started = time.perf_counter()
        response = await http.post(
            "/api/v1/predictions", data={"patient_id": "P-CHAOS-3"}, files={"image": ("c.png", image, "image/png")}
        )
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "overloaded", response.text
        return response.status_code, time.perf_counter() - started, response.headers.get("retry-after")

    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(
        base_url=service.base_url, timeout=120, headers=service.http.headers, limits=limits
    ) as http:
        return await asyncio.gather(*(one(http) for _ in range(count)))


def _rss_mb(pids: set[int]) -> float:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


@pytest.fixture()
def small_capacity(service):
    """The shipped config with the classifier's bounds cut to 2 running + 4 queued: capacity 6."""
    config = deploy_config(service.checkpoint, service.port, service.env, {"batch_wait_timeout_s": 0.2})
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == CLASSIFIER:
            deployment.update(max_ongoing_requests=2, max_queued_requests=4)
    deploy(config)
    yield 6
    service.redeploy({"batch_wait_timeout_s": 0.2})


def test_ten_times_capacity_is_refused_fast_with_retry_after_and_memory_stays_flat(service, small_capacity):
    wait_until(lambda: service.http.get("/readyz").status_code == 200, 60, "ready after the redeploy")
    pids = replica_pids(CLASSIFIER) | replica_pids(INGRESS)
    rss = []
    for _ in range(3):
        results = asyncio.run(_burst(service, 10 * small_capacity))
        statuses = {status for status, _, _ in results}
        assert statuses <= {200, 503}, statuses  # no timeout, no 500
        refused = [(s, t, r) for s, t, r in results if s == 503]
        served = [(s, t, r) for s, t, r in results if s == 200]
        assert refused and len(served) >= small_capacity
        assert all(retry_after and int(retry_after) > 0 for _, _, retry_after in refused)
        # Refusals come back at once, not after waiting behind the admitted work.
        assert max(t for _, t, _ in refused) < max(t for _, t, _ in served)
        rss.append(_rss_mb(pids))
    # No crash: the same replica processes are serving, and memory does not climb burst after burst.
    assert replica_pids(CLASSIFIER) | replica_pids(INGRESS) == pids
    assert rss[2] <= rss[0] * 1.10 + 20, rss
    assert service.predict(chest_png(78)).status_code == 200


def test_a_prediction_past_the_request_timeout_is_a_504_with_retry_after(service):
    """CXR_REQUEST_TIMEOUT_S below the batch window: every prediction misses its deadline."""
    env = {**service.env, "CXR_REQUEST_TIMEOUT_S": "0.1"}
    try:
        deploy(deploy_config(service.checkpoint, service.port, env, {"batch_wait_timeout_s": 0.2}))
        wait_until(lambda: service.http.get("/readyz").status_code == 200, 120, "ready with the short timeout")
        response = service.predict(chest_png(79))
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "timeout" and response.headers["retry-after"] == "5"
    finally:
        deploy(deploy_config(service.checkpoint, service.port, service.env, {"batch_wait_timeout_s": 0.2}))
    wait_until(lambda: service.http.get("/readyz").status_code == 200, 120, "ready after restoring the timeout")
    assert service.predict(chest_png(80)).status_code == 200
