"""DCMTK storescu -> `cxr gateway` (its own process) -> the running service -> a stored record.
The forwarder is also driven directly against the service and against no service at all."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.forwarder import Backoff, Forwarder
from gateway.spool import Spool
from tests.helpers import free_port, skip_or_fail_in_ci
from tests.serve.helpers import chest_dicom, uid_of


def metric_value(text: str, series: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(line.rsplit(" ", 1)[1])


def alerted_gateway_series() -> set[str]:
    rules = yaml.safe_load((Path(__file__).resolve().parents[2] / "k8s/base/prometheusrule.yaml").read_text())
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    found = {name for e in exprs for name in re.findall(r"\b(cxr_gateway_[a-z_]+)\b", e)}
    assert len(found) >= 4
    return found


def test_the_forwarder_delivers_each_instance_once_and_keeps_it_while_the_service_is_down(service, db, tmp_path):
    spool = Spool(tmp_path / "spool", 50 * 1024**2)
    chest, head = chest_dicom(70, "GW-FWD-1"), chest_dicom(71, "GW-FWD-2", body_part="HEAD")
    corrupt = chest_dicom(69, "GW-FWD-3")[:-5000]  # pixel data cut short in transit
    for data in (chest, head, corrupt):
        spool.put(uid_of(data), data)
    down = Forwarder(spool, f"http://127.0.0.1:{free_port()}", service.api_key, Backoff(0.01, 0.05))
    assert down.drain() == 0 and down.failures == 1 and len(spool.waiting()) == 3  # nothing dropped

    revoked = Forwarder(spool, service.base_url, "not-a-key", Backoff(0.01, 0.05))
    assert revoked.drain() == 0 and len(spool.waiting()) == 3  # a wrong key is fixed by ops, not filed
    up = Forwarder(spool, service.base_url, service.api_key)
    assert up.drain() == 3 and spool.waiting() == []
    record = db["predictions"].find_one({"request_id": f"dicom:{uid_of(chest)}"})
    assert record and record["patient_id"] == "GW-FWD-1"  # from the DICOM header
    # The head radiograph: recorded by the service as not analysed, so it leaves the spool.
    skull = db["predictions"].find_one({"dicom.sop_instance_uid": uid_of(head)})
    assert skull["status"] == "not_analysed" and skull["not_analysed"]["code"] == "dicom_not_chest"
    (refusal,) = spool.status().refusals  # the corrupt file: refused for good, kept, visible to ops
    assert refusal["status"] == 422 and refusal["code"] == "truncated" and refusal["file"] == uid_of(corrupt)
    assert (spool.refused / f"{uid_of(corrupt)}.dcm").read_bytes() == corrupt

    spool.put(uid_of(chest), chest)  # the PACS sends the same instance again
    assert up.drain() == 1
    assert db["predictions"].count_documents({"request_id": f"dicom:{uid_of(chest)}"}) == 1


def test_storescu_to_the_gateway_process_ends_as_a_stored_record(service, db, tmp_path):
    if not shutil.which("storescu"):
        skip_or_fail_in_ci("DCMTK is not installed (apt-get install dcmtk)")
    key_file = tmp_path / "api-key"
    key_file.write_text(service.api_key + "\n")
    port, spool, metrics_port = free_port(), tmp_path / "spool", free_port()
    gateway = subprocess.Popen(
        [str(Path(sys.executable).with_name("cxr")), "gateway", "--ae-title", "CXR_AI", "--port", str(port)]
        + ["--allow-ae", "MODALITY1", "--service-url", service.base_url, "--api-key-file", str(key_file)]
        + ["--spool", str(spool), "--metrics-port", str(metrics_port)]
        + ["--send-to", f"NOBODY@127.0.0.1:{free_port()}"],  # a PACS that is down: its outbox is measured too
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "listening" in gateway.stdout.readline()
        path = tmp_path / "study.dcm"
        path.write_bytes(chest_dicom(72, "GW-E2E-1"))
        command = ["storescu", "-aet", "MODALITY1", "-aec", "CXR_AI", "127.0.0.1", str(port), str(path)]
        assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
        query = {"request_id": f"dicom:{uid_of(path.read_bytes())}"}
        deadline = time.monotonic() + 60
        while db["predictions"].count_documents(query) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        record = db["predictions"].find_one(query)
        assert record and record["patient_id"] == "GW-E2E-1" and record["top_label"]
        status = subprocess.run(
            [str(Path(sys.executable).with_name("cxr")), "gateway", "status", "--spool", str(spool)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert '"pending": 0' in status.stdout and '"refused": 0' in status.stdout
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert metric_value(metrics, 'cxr_gateway_received_total{outcome="stored"}') == 1
        assert metric_value(metrics, 'cxr_gateway_forwarded_total{outcome="stored"}') == 1
        assert metric_value(metrics, "cxr_gateway_spool_pending") == 0
        exported = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if not line.startswith("#")}
        assert alerted_gateway_series() <= exported  # every series the gateway alerts name exists
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    assert gateway.returncode == 0


@pytest.mark.parametrize("calling", ["UNLISTED"])
def test_the_gateway_refuses_an_unlisted_ae_before_any_data(calling, tmp_path):
    if not shutil.which("echoscu"):
        skip_or_fail_in_ci("DCMTK is not installed (apt-get install dcmtk)")
    from gateway.scp import build_ae, start_scp

    port = free_port()
    server = start_scp(build_ae("CXR_AI", ["MODALITY1"]), "127.0.0.1", port, Spool(tmp_path / "s", 1024**2))
    try:
        refused = subprocess.run(
            ["echoscu", "-aet", calling, "-aec", "CXR_AI", "127.0.0.1", str(port)], capture_output=True, timeout=60
        )
        assert refused.returncode != 0
    finally:
        server.shutdown()


def test_an_instance_answered_but_not_stored_stays_spooled_until_the_database_is_back(
    service, db, mongo_server, tmp_path
):
    spool = Spool(tmp_path / "spool", 50 * 1024**2)
    data = chest_dicom(73, "GW-DB-1")
    spool.put(uid_of(data), data)
    forwarder = Forwarder(spool, service.base_url, service.api_key, Backoff(0.01, 0.05))
    mongo_server.stop()
    try:
        assert forwarder.drain() == 0 and len(spool.waiting()) == 1  # answered, not saved: kept
    finally:
        mongo_server.start()
    deadline = time.monotonic() + 60
    while spool.waiting() and time.monotonic() < deadline:  # the store reconnects on its own
        forwarder.drain()
        time.sleep(0.5)
    assert spool.waiting() == []
    assert db["predictions"].count_documents({"request_id": f"dicom:{uid_of(data)}"}) == 1


def test_a_burst_while_the_service_is_down_survives_a_killed_gateway_and_is_all_analysed_after_restart(
    service, db, tmp_path
):
    if not shutil.which("storescu"):
        skip_or_fail_in_ci("DCMTK is not installed (apt-get install dcmtk)")
    key_file, spool, port = tmp_path / "api-key", tmp_path / "spool", free_port()
    key_file.write_text(service.api_key)

    def start(service_url: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("cxr")), "gateway", "--ae-title", "CXR_AI", "--port", str(port)]
            + ["--allow-ae", "MODALITY1", "--service-url", service_url, "--api-key-file", str(key_file)]
            + ["--spool", str(spool)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert "listening" in process.stdout.readline()
        return process

    first = start(f"http://127.0.0.1:{free_port()}")  # the service down during a burst: instances wait
    files = []
    for seed in range(74, 84):
        files.append(tmp_path / f"{seed}.dcm")
        files[-1].write_bytes(chest_dicom(seed, f"GW-KILL-{seed}"))
    command = ["storescu", "-aet", "MODALITY1", "-aec", "CXR_AI", "127.0.0.1", str(port), *map(str, files)]
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    first.kill()  # SIGKILL: no clean-up, as a node failure
    first.wait(timeout=30)
    second = start(service.base_url)
    try:
        queries = [{"request_id": f"dicom:{uid_of(f.read_bytes())}"} for f in files]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(db["predictions"].count_documents(q) for q in queries):
            time.sleep(0.5)
        assert [db["predictions"].count_documents(q) for q in queries] == [1] * len(files)  # all, once
    finally:
        second.terminate()
        second.wait(timeout=30)
