"""Roles over real HTTP: every route of the API, the pages, STOW-RS, FHIR and the reading room, for every
role, from the caller's side.

Allowed means the role's request gets past authorization (whatever the handler then answers);
denied is a 403 that changes nothing and is written to the audit log.
"""

from __future__ import annotations

import uuid

import pytest

from serve.api import Api
from serve.dicomweb import DicomWeb
from serve.fhir import Fhir
from serve.identity import ROLE_PERMISSIONS, ROLES
from serve.monitoring import Monitoring
from serve.pages import Pages
from serve.reading import Reading
from serve.routes import declared
from tests.serve.helpers import chest_png, client

DENIED = "role may not do this"
EXAMPLE_PATHS = {
    "{prediction_id}": "no-such-prediction",
    "{patient_id}": "P-ROLE-0",
    "{key_id}": "nokey",
    "{study}": "1.2.3",
    "{report_id}": "no-such-report",
    "{rest:path}": "",
}


def concrete(path: str) -> str:
    for placeholder, value in EXAMPLE_PATHS.items():
        path = path.replace(placeholder, value)
    return path


OWNERS = (Api, Pages, DicomWeb, Fhir, Reading, Monitoring)
ROUTES = [(spec.path, method, spec.needs) for owner in OWNERS for _, spec in declared(owner) for method in spec.methods]


@pytest.fixture(scope="module")
def role_keys(service):
    created = {}
    with client(service.base_url, timeout=60, headers={"Authorization": f"Bearer {service.api_key}"}) as admin:
        for role in ROLES:
            body = admin.post("/api/v1/keys", json={"name": f"role-test-{role}", "role": role}).json()
            created[role] = body["api_key"]
    return created


def test_every_route_declares_a_permission_every_role_either_has_or_lacks():
    assert all(needs is None or any(needs in p for p in ROLE_PERMISSIONS.values()) for _, _, needs in ROUTES)


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reaches_exactly_the_routes_its_permissions_name(service, db, role_keys, role):
    from serve.identity import Identity

    identity = Identity(f"role-test-{role}", None, role)
    with client(
        service.base_url, timeout=60, headers={"Authorization": f"Bearer {role_keys[role]}"}, follow_redirects=False
    ) as http:
        for path, method, needs in ROUTES:
            if needs is None:
                continue
            before = db["audit"].count_documents({"action": "denied", "actor": f"role-test-{role}"})
            response = http.request(
                method, concrete(path), **({"json": {}} if method == "POST" and "keys" in path else {})
            )
            refused_for_role = response.status_code == 403 and DENIED in response.text
            if identity.may(needs):  # past authorization (a page form may still want its CSRF token)
                assert not refused_for_role, (role, method, path, response.text[:200])
            else:
                assert refused_for_role, (role, method, path, response.status_code)
                if path.startswith("/api/"):
                    assert response.json()["error"]["code"] == "forbidden"
                after = db["audit"].count_documents({"action": "denied", "actor": f"role-test-{role}"})
                assert after == before + 1  # every refusal is on the record


def test_an_integration_reads_only_what_it_submitted(service, role_keys):
    patient = f"P-INT-{uuid.uuid4().hex[:6]}"
    headers = lambda role: {"Authorization": f"Bearer {role_keys[role]}"}  # noqa: E731
    with (
        client(service.base_url, timeout=60, headers=headers("integration")) as bridge,
        client(service.base_url, timeout=60, headers=headers("clinician")) as clinician,
    ):
        files = {"image": ("c.png", chest_png(901), "image/png")}
        own = bridge.post("/api/v1/predictions", data={"patient_id": patient, "save": "1"}, files=files).json()
        files = {"image": ("c.png", chest_png(902), "image/png")}
        other = clinician.post("/api/v1/predictions", data={"patient_id": patient, "save": "1"}, files=files).json()
        assert bridge.get(f"/api/v1/predictions/{own['prediction_id']}").status_code == 200
        assert bridge.get(f"/api/v1/predictions/{other['prediction_id']}").status_code == 404  # not even its existence
        assert bridge.get(f"/api/v1/predictions/{other['prediction_id']}/image").status_code == 404
        listing = bridge.get(f"/api/v1/patients/{patient}/predictions").json()
        assert [item["prediction_id"] for item in listing["items"]] == [own["prediction_id"]]
        assert clinician.get(f"/api/v1/patients/{patient}/predictions").json()["total"] == 2
