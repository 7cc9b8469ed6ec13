"""Results owed to the PACS for instances received by STOW-RS: claimed by a gateway under a lease,
fetched, reported. Against the real database, and over real HTTP from each caller's side: a
gateway's key reaches those records only, and other roles reach none of it."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pydicom
import pytest

from serve.records import now
from tests.serve.helpers import chest_dicom, client, stored_record, uid_of
from tests.serve.test_stow import multipart


def due(records, count: int) -> list[str]:
    """``count`` records owing their results, created a second apart, oldest first."""
    start = now() - timedelta(hours=1)
    ids = []
    for i in range(count):
        saved = records.save(
            stored_record(created_at=start + timedelta(seconds=i), results_due=True), {"original": b"o"}
        )
        ids.append(saved.prediction_id)
    return ids


def test_claims_are_leased_oldest_first_and_disjoint_until_the_lease_runs_out(records):
    ids = due(records, 3)
    records.save(stored_record(), {"original": b"o"})  # an upload: nothing is due for it
    first = [r["_id"] for r in records.claim_due(2, lease_s=60)]
    second = [r["_id"] for r in records.claim_due(5, lease_s=60)]
    assert first == ids[:2] and second == ids[2:]  # a second gateway polling gets the rest
    assert records.claim_due(5, lease_s=60) == []
    later = now() + timedelta(seconds=61)  # the first gateway died: its claims are free again
    assert [r["_id"] for r in records.claim_due(5, lease_s=60, at=later)] == ids


def test_a_delivery_report_ends_the_debt_and_queued_never_hides_a_later_state(records):
    (prediction_id,) = due(records, 1)
    records.claim_due(1, lease_s=60)
    delivered = {"destination": "PACS@h:104", "status": "delivered", "attempts": 1}
    assert records.record_delivery(prediction_id, delivered)
    # The queuing gateway's report can arrive after its sender's: it must not undo "delivered".
    assert records.record_delivery(prediction_id, {"destination": "PACS@h:104", "status": "queued", "attempts": 0})
    assert [d["status"] for d in records.get(prediction_id)["deliveries"]] == ["delivered"]
    assert records.get(prediction_id)["results_due"] is False
    assert records.claim_due(5, lease_s=60, at=now() + timedelta(days=1)) == []
    assert not records.record_delivery("no-such-record", delivered)


@pytest.fixture()
def gateway_http(service, keys):
    _, token = keys.create(f"gw-{uuid.uuid4().hex[:6]}", "gateway", 10_000)
    with client(service.base_url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as http:
        yield http


@pytest.fixture()
def integration_http(service, keys):
    _, token = keys.create(f"int-{uuid.uuid4().hex[:6]}", "integration", 10_000)
    with client(service.base_url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as http:
        yield http


def claim_all(http) -> dict[str, dict]:
    """Claim until nothing is left (other tests' STOW-RS records may be due too)."""
    claimed = {}
    while True:
        response = http.post("/api/v1/deliveries:claim", json={"limit": 32})
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        if not items:
            return claimed
        claimed |= {item["prediction_id"]: item for item in items}


def test_a_stow_rs_instance_is_claimed_fetched_and_reported_by_a_gateway_only(
    service, db, gateway_http, integration_http
):
    instance = chest_dicom(420, "CLAIM-0001")
    headers, body = multipart(instance)
    assert integration_http.post("/dicomweb/studies", content=body, headers=headers).status_code == 200
    uploaded = integration_http.post(
        "/api/v1/predictions",
        data={"save": "1"},
        files={"image": ("i.dcm", chest_dicom(421, "CLAIM-0001"), "application/dicom")},
    ).json()
    record = db["predictions"].find_one({"dicom.sop_instance_uid": uid_of(instance)})
    prediction_id = record["_id"]

    # Attacker's side first: the sender (integration) and a clinician may not claim or fetch.
    for http in (integration_http, service.anonymous):
        assert http.post("/api/v1/deliveries:claim", json={}).status_code in (401, 403)
        assert http.get(f"/api/v1/deliveries/{prediction_id}/instance").status_code in (401, 403)
    assert db["predictions"].find_one({"_id": prediction_id})["results_due"] is True

    claimed = claim_all(gateway_http)
    assert prediction_id in claimed and uploaded["prediction_id"] not in claimed  # an upload owes nothing
    item = claimed[prediction_id]
    assert item["dicom"]["sop_instance_uid"] == uid_of(instance) and item["probabilities"] and item["model"]
    assert item["results_due"] is True and "results_leased_until" not in item
    fetched = gateway_http.get(f"/api/v1/deliveries/{prediction_id}/instance")
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "application/dicom"
    sent, got = (pydicom.dcmread(io.BytesIO(b)) for b in (instance, fetched.content))
    assert got.SOPInstanceUID == sent.SOPInstanceUID and got.PixelData == sent.PixelData
    # The gateway reaches nothing else of other callers': their records, their uploads' files.
    assert gateway_http.get(f"/api/v1/predictions/{prediction_id}").status_code == 404
    assert gateway_http.get(f"/api/v1/deliveries/{uploaded['prediction_id']}/instance").status_code == 404
    report = {"destination": "PACS@10.0.0.1:104", "status": "queued", "attempts": 0}
    nope = gateway_http.post(f"/api/v1/predictions/{uploaded['prediction_id']}/deliveries", json=report)
    assert nope.status_code == 404

    assert gateway_http.post(f"/api/v1/predictions/{prediction_id}/deliveries", json=report).status_code == 204
    stored = db["predictions"].find_one({"_id": prediction_id})
    assert stored["results_due"] is False and [d["status"] for d in stored["deliveries"]] == ["queued"]
    assert gateway_http.get(f"/api/v1/deliveries/{prediction_id}/instance").status_code == 404  # no longer due
    actions = {e["action"] for e in db["audit"].find({"prediction_id": prediction_id})}
    assert {"claim", "export", "delivery"} <= actions
    page = service.http.get(f"/predictions/{prediction_id}").text
    assert "queued" in page


@pytest.mark.parametrize("body", [{"limit": 0}, {"limit": 33}, {"limit": "8"}, {"limit": True}, []])
def test_a_malformed_claim_is_refused_and_claims_nothing(gateway_http, db, body):
    before = db["predictions"].count_documents({"results_leased_until": {"$exists": True}})
    response = gateway_http.post("/api/v1/deliveries:claim", json=body)
    assert response.status_code == 400
    assert db["predictions"].count_documents({"results_leased_until": {"$exists": True}}) == before


def test_a_gateway_whose_key_may_not_claim_stops_asking(service, keys, tmp_path):
    """An integration key in a gateway: one refused claim, a clear log line, and no more asking
    (each refusal is an audit entry)."""
    from gateway.due_results import DueResults
    from gateway.forwarder import Forwarder
    from gateway.spool import Spool

    _, token = keys.create(f"int-{uuid.uuid4().hex[:6]}", "integration", 10_000)
    forwarder = Forwarder(Spool(tmp_path / "spool", 10**9), service.base_url, token)
    due_results = DueResults(forwarder, tmp_path / "claimed", ["PACS@127.0.0.1:104"])
    assert due_results.poll() == 0 and due_results.refused
