"""The OpenAPI document describes every route, and real responses satisfy its schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.serve.helpers import chest_png

FUZZ_CONFIG = Path(__file__).with_name("schemathesis.toml")
FUZZ_EXAMPLES = 30  # per operation: a few dozen, as the contract check asks, in bounded time


@pytest.fixture(scope="module")
def spec(service):
    document = service.http.get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    return document


def check(spec, schema_name: str, instance) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(instance)


def test_the_served_document_is_valid_openapi_3_1(spec):
    """The official OpenAPI 3.1 schema, as API linters and client generators read the document: a
    YAML slip (a comma in a flow mapping makes a stray key) is an error there, silent elsewhere."""
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    try:
        validate(spec)
    except OpenAPIValidationError as error:
        pytest.fail(f"{error.message} at {list(error.path)}")
    # Every operation under one declared tag: how API browsers and client generators group them.
    declared = {tag["name"] for tag in spec["tags"]}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert len(operation.get("tags", [])) == 1 and operation["tags"][0] in declared, (method, path)


def test_every_route_is_documented(service, spec):
    from serve.api import Api
    from serve.monitoring import Monitoring
    from serve.reading import Reading
    from serve.routes import declared

    methods: dict[str, set[str]] = {}
    for owner in (Api, Reading, Monitoring):
        for _, route in declared(owner):
            if owner is Api or route.path.startswith("/api/"):
                methods.setdefault(route.path, set()).update(m.lower() for m in route.methods)
    assert methods == {path: set(operations) for path, operations in spec["paths"].items()}


def test_real_responses_match_the_schemas(service, spec):
    created = service.predict(chest_png(400), patient_id="OA-0001", save="1", explain="gradcam")
    check(spec, "Prediction", created.json())
    prediction_id = created.json()["prediction_id"]
    check(spec, "StoredPrediction", service.http.get(f"/api/v1/predictions/{prediction_id}").json())
    check(spec, "PatientPredictions", service.http.get("/api/v1/patients/OA-0001/predictions").json())
    check(spec, "ModelCard", service.http.get("/api/v1/model").json())
    check(spec, "Health", service.http.get("/healthz").json())
    check(spec, "Ready", service.http.get("/readyz").json())
    for bad in (
        service.predict(b"nope"),
        service.http.get("/api/v1/predictions/missing"),
        service.http.get("/api/v1/patients/bad%20id/predictions"),
    ):
        assert bad.status_code in (400, 404, 415)
        check(spec, "Error", bad.json())
    documented = spec["paths"]["/api/v1/predictions"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422"} <= set(documented)


def test_schemas_reject_wrong_shapes(spec):
    with pytest.raises(jsonschema.ValidationError):
        check(spec, "Error", {"error": {"message": "no code"}})
    with pytest.raises(jsonschema.ValidationError):
        check(spec, "Prediction", {"saved": "yes"})


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_an_external_contract_fuzzer_finds_the_document_truthful(service, with_key, tmp_path):
    """schemathesis, run as its users run it, against the live service: every check, a fixed seed,
    a bounded number of examples per operation. Any 5xx, undocumented status, schema violation
    or other check failure fails this test with schemathesis' own report."""
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(FUZZ_CONFIG),
        "run",
        f"{service.base_url}/api/v1/openapi.json",
        "--checks",
        "all",
        "--seed",
        "20261129",
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    if with_key:
        command += ["--header", f"Authorization: Bearer {service.api_key}"]
    # Its own directory: schemathesis keeps a crash cache in the working directory.
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
