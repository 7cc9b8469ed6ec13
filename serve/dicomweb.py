"""STOW-RS (DICOM PS3.18 10.5): ``POST /dicomweb/studies[/{study}]`` stores DICOM instances as records.

The body is ``multipart/related; type="application/dicom"``, one instance per part. Each instance
goes the same way as an upload to ``/api/v1/predictions`` with ``save=1``: the same header checks,
pixel budget and out-of-scope gate, its request id ``dicom:<SOP Instance UID>`` (a resend is the
same request, stored once), and a not-chest, not-frontal or out-of-scope instance kept as a record
that says it was not analysed. An analysed instance's results (the SR, the annotated picture) are
due at the PACS: the record says so until a DICOM gateway claims them and delivers them to its
destinations (``POST /api/v1/deliveries:claim``). The answer is the PS3.18 Store Instances Response, in DICOM JSON:
stored instances in Referenced SOP Sequence (0008,1199), the others in Failed SOP Sequence
(0008,1198) with a PS3.4 Failure Reason (0008,1197) and, for people, one ``Warning: 299`` header per
failure with the reason in words. 200: all stored; 202: some failed; 409: none stored.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve.authentication import Authenticator, identity_of
from serve.errors import InputError, ServiceError, error_response
from serve.identity import PREDICT
from serve.inputs import NotAnalysed
from serve.predictions import PredictionService
from serve.routes import RouteOwner, route
from serve.uploads import Upload

DICOM_JSON = "application/dicom+json"
# PS3.4 status codes used as STOW-RS Failure Reasons (PS3.18 Table 10.5.3-3).
PROCESSING_FAILURE = 0x0110
DUPLICATE_INSTANCE = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
SYNTAX_NOT_SUPPORTED = 0xC122
FAILURE_REASONS = {
    "dicom_unsupported_syntax": SYNTAX_NOT_SUPPORTED,
    "dicom_modality": SOP_CLASS_NOT_SUPPORTED,
    "too_many_pixels": OUT_OF_RESOURCES,
    "too_large": OUT_OF_RESOURCES,
    "sop_instance_conflict": DUPLICATE_INSTANCE,
    "idempotency_key_reused": DUPLICATE_INSTANCE,
    "study_mismatch": DOES_NOT_MATCH,
}


@dataclass(frozen=True)
class Outcome:
    """One part's result: stored (a record exists) or failed with a PS3.4 reason and words."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    stored: bool
    reason: int = 0
    message: str = ""


def split_parts(content_type: str, body: bytes, max_parts: int) -> list[bytes]:
    """The instances of a ``multipart/related; type="application/dicom"`` body, in order."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "multipart/related":
        raise InputError(415, "not_multipart_related", 'send multipart/related; type="application/dicom"')
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    declared = (message.get_param("type") or "").lower()
    if declared and declared != "application/dicom":
        raise InputError(415, "unsupported_part_type", f"this service stores application/dicom parts, not {declared}")
    if not message.is_multipart() or not message.get_boundary():
        raise InputError(400, "bad_multipart", "the multipart body has no boundary or no parts")
    parts = list(message.iter_parts())
    if not parts:
        raise InputError(400, "bad_multipart", "the multipart body holds no instance")
    if len(parts) > max_parts:
        raise InputError(413, "too_many_instances", f"at most {max_parts} instances per request", "image")
    out = []
    for part in parts:
        kind = part.get_content_type()
        if kind != "application/dicom":
            raise InputError(415, "unsupported_part_type", f"a part is {kind}, not application/dicom")
        out.append(part.get_payload(decode=True) or b"")
    return out


def as_part10(data: bytes) -> bytes:
    """PS3.10 files start with a 128-byte preamble and ``DICM``; some STOW-RS clients send the data
    set with its file meta but without them. Restored here, so such an instance is read like any other."""
    if data[128:132] == b"DICM":
        return data
    if data[:4] == b"DICM" and data[4:6] == b"\x02\x00":
        return bytes(128) + data
    if data[:2] == b"\x02\x00":  # (0002,xxxx): file meta straight away
        return bytes(128) + b"DICM" + data
    return data


def _uid(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _reference(outcome: Outcome) -> dict:
    item = {}
    if outcome.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
    if outcome.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [outcome.sop_instance_uid]}
    if not outcome.stored:
        item["00081197"] = {"vr": "US", "Value": [outcome.reason]}
    return item


def store_response(outcomes: list[Outcome]) -> Response:
    """The Store Instances Response (PS3.18 Table 10.5.3-1) with its status."""
    stored = [_reference(o) for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    body = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_reference(o) for o in failed]}
    status = 200 if not failed else (202 if stored else 409)
    headers = [("Warning", f'299 cxr-serve "{_quoted(o)}"') for o in failed[:20]]
    response = JSONResponse(body, status, media_type=DICOM_JSON)
    for name, value in headers:
        response.headers.append(name, value)
    return response


def _quoted(outcome: Outcome) -> str:
    text = f"{outcome.sop_instance_uid or 'an instance'}: {outcome.message}"
    return "".join(c for c in text if c.isprintable() and c not in '"\\')[:300]


class DicomWeb(RouteOwner):
    def __init__(self, predictions: PredictionService, authenticator: Authenticator):
        self.predictions, self.authenticator = predictions, authenticator
        self.settings = predictions.settings

    async def error_response(self, request: Request, error: ServiceError) -> Response:
        return error_response(error)

    @route("/dicomweb/studies", "POST", needs=PREDICT, batch=True)
    async def store_instances(self, request: Request) -> Response:
        return await self._store(request, None)

    @route("/dicomweb/studies/{study}", "POST", needs=PREDICT, batch=True)
    async def store_study_instances(self, request: Request) -> Response:
        return await self._store(request, request.path_params["study"])

    async def _store(self, request: Request, study: str | None) -> Response:
        started = time.perf_counter()
        accept = request.headers.get("accept", "*/*")
        if not any(t in accept for t in (DICOM_JSON, "application/json", "*/*", "application/*")):
            raise InputError(406, "not_acceptable", f"the store response is {DICOM_JSON}")
        body, content_type = await request.body(), request.headers.get("content-type", "")
        parts = await self.predictions.off_loop(split_parts, content_type, body, self.settings.max_batch_items)
        self.authenticator.charge(request, len(parts) - 1)  # each instance counts against the rate limit
        outcomes = await asyncio.gather(*(self._store_one(request, data, study, started) for data in parts))
        return store_response(list(outcomes))

    async def _store_one(self, request: Request, data: bytes, study: str | None, started: float) -> Outcome:
        from cxr_model.dicom import read_identifiers

        data = as_part10(data)
        identifiers = read_identifiers(data)
        sop_class = _uid(identifiers and identifiers.sop_class_uid)
        uid = _uid(identifiers and identifiers.sop_instance_uid)
        if identifiers is None:
            return Outcome(None, None, False, CANNOT_UNDERSTAND, "not a DICOM file (no preamble and DICM prefix)")
        if study is not None and identifiers.study_instance_uid != study:
            return Outcome(sop_class, uid, False, DOES_NOT_MATCH, "the instance belongs to another study")
        fields = {"save": "1"} | ({"request_id": f"dicom:{uid}"} if uid and len(uid) <= 120 else {})
        try:
            # Its results are due at the PACS: a gateway claims them (no gateway holds this instance).
            upload = Upload(fields, data, None)
            answer = await self.predictions.answer(upload, identity_of(request), started, results_due=True)
        except NotAnalysed as refusal:
            if refusal.details.get("saved"):
                return Outcome(sop_class, uid, True)  # kept as a record that says why it was not analysed
            return Outcome(sop_class, uid, False, PROCESSING_FAILURE, str(refusal))
        except ServiceError as exc:
            reason = FAILURE_REASONS.get(exc.code, PROCESSING_FAILURE if exc.status >= 500 else CANNOT_UNDERSTAND)
            return Outcome(sop_class, uid, False, reason, str(exc))
        if not answer["saved"]:  # analysed but not stored (the database is down): the sender must retry
            return Outcome(sop_class, uid, False, PROCESSING_FAILURE, f"not stored: {answer.get('save_error')}")
        return Outcome(sop_class, uid, True)
