"""FHIR R4: ``GET /fhir/DiagnosticReport/{report_id}``, a stored record as the EHR side reads it.

One DiagnosticReport per record, its id the prediction id:

- ``status`` ``preliminary`` (an AI result no person has verified) or, for an instance not
  analysed, ``cancelled`` with the reason as the conclusion;
- one contained Observation per label: the probability as a unitless ``valueQuantity`` (UCUM
  ``1``), ``interpretation`` POS/NEG (HL7 v3 ObservationInterpretation) from the model's own
  positives, and the model as ``device``;
- ``imagingStudy``: a logical reference to the ImagingStudy by its Study Instance UID (system
  ``urn:dicom:uid``, value ``urn:oid:<uid>``), as FHIR identifies DICOM objects; the subject by the
  patient ID the record holds.

Labels use CXR Serve's own code system rather than guessed LOINC or SNOMED codes, for the same
reason as the structured report: a wrong standard code reads as a diagnosis it is not. Errors are
OperationOutcome resources.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve.authentication import identity_of
from serve.errors import NotFound, ServiceError
from serve.identity import READ_OWN
from serve.prediction import NOT_ANALYSED
from serve.routes import RouteOwner, route

FHIR_JSON = "application/fhir+json"
LABEL_SYSTEM = "urn:cxr-serve:label"
RECORD_SYSTEM = "urn:cxr-serve:prediction"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
REPORT_TEXT = "Chest radiograph AI triage - decision support, not for diagnostic use"


def _observation(index: int, label: str, probability: float, positive: bool, record: dict) -> dict:
    model = record["model"]
    return {
        "resourceType": "Observation",
        "id": f"label-{index}",
        "status": "preliminary",
        "code": {"coding": [{"system": LABEL_SYSTEM, "code": label, "display": label}], "text": label},
        "subject": _subject(record),
        "effectiveDateTime": record["created_at"].isoformat(),
        "valueQuantity": {
            "value": round(float(probability), 6),
            "unit": "probability",
            "system": "http://unitsofmeasure.org",
            "code": "1",
        },
        "interpretation": [
            {"coding": [{"system": INTERPRETATION, "code": "POS" if positive else "NEG"}]},
        ],
        "device": {"display": f"{model['name']} {model['version']} (weights sha256 {model['weights_sha256']})"},
    }


def _subject(record: dict) -> dict:
    return {"type": "Patient", "identifier": {"value": record["patient_id"]}}


def diagnostic_report(record: dict) -> dict:
    """A stored record (as the store returns it) as a FHIR R4 DiagnosticReport."""
    report = {
        "resourceType": "DiagnosticReport",
        "id": record["_id"],
        "identifier": [{"system": RECORD_SYSTEM, "value": record["_id"]}],
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE, "code": "RAD", "display": "Radiology"}]}],
        "code": {"text": REPORT_TEXT},
        "subject": _subject(record),
        "effectiveDateTime": record["created_at"].isoformat(),
        "issued": record["created_at"].isoformat(),
    }
    study = (record.get("dicom") or {}).get("study_instance_uid")
    if study:
        report["imagingStudy"] = [
            {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}}
        ]
    if record.get("status") == NOT_ANALYSED:
        return report | {"status": "cancelled", "conclusion": f"Not analysed: {record['not_analysed']['message']}"}
    positives = set(record.get("positives") or [])
    probabilities = record["probabilities"].items()
    observations = [_observation(i, label, p, label in positives, record) for i, (label, p) in enumerate(probabilities)]
    conclusion = (
        f"AI triage, unverified: {record['top_label']} (probability {record['confidence']:.3f}). "
        "Decision support, not for diagnostic use."
    )
    return report | {
        "status": "preliminary",
        "contained": observations,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": conclusion,
    }


def operation_outcome(error: ServiceError) -> JSONResponse:
    code = {404: "not-found", 401: "login", 403: "forbidden"}.get(error.status, "processing")
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": str(error)}],
    }
    return JSONResponse(body, error.status, headers=error.headers(), media_type=FHIR_JSON)


class Fhir(RouteOwner):
    def __init__(self, predictions, store):
        self.predictions, self.store = predictions, store

    async def error_response(self, request: Request, error: ServiceError) -> Response:
        return operation_outcome(error)

    @route("/fhir/DiagnosticReport/{report_id}", needs=READ_OWN)
    async def diagnostic_report(self, request: Request) -> Response:
        record = await self.store.get.remote(request.path_params["report_id"], identity_of(request))
        if record is None:
            raise NotFound("no such DiagnosticReport")
        return JSONResponse(diagnostic_report(record), media_type=FHIR_JSON)
