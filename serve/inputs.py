"""Validation of what clients send, before anything reaches the model or the database.

Each rejection is an ``InputError`` with an HTTP status and a stable error code, so the API, the
pages and the metrics all name the same problem. ``check_request`` checks every field of a
prediction request at once.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cxr_model.dicom import DicomIdentifiers, header_patient_id, read_identifiers
from cxr_model.preprocessing import ImageDecodeError, PreprocessSpec, open_export, resize_levels, sniff_format
from serve.errors import InputError, InvalidRequest
from serve.reviews import MAX_COMMENT, VERDICTS, findings_of

PATIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")

# ImageDecodeError.reason -> HTTP status
_DECODE_STATUS = {
    "empty": 400,
    "not_an_image": 415,
    "truncated": 422,
    "too_many_pixels": 413,
    "dicom_unsupported_syntax": 415,
    "dicom_no_pixels": 422,
    "dicom_modality": 422,
    "dicom_not_chest": 422,
    "dicom_not_frontal": 422,
    "dicom_not_greyscale": 422,
    "dicom_inconsistent": 422,
    "trailing_data": 422,
}


def validate_patient_id(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(400, "missing_patient_id", "patient_id is required", "patient_id")
    value = value.strip()
    if not PATIENT_ID.fullmatch(value):
        raise InputError(
            400,
            "bad_patient_id",
            "patient_id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            "patient_id",
        )
    return value


def validate_request_id(value) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not REQUEST_ID.fullmatch(value):
        raise InputError(400, "bad_request_id", "request_id must be 8-128 letters, digits or ._:-", "request_id")
    return value


DELIVERY_STATUSES = ("queued", "delivered", "retrying", "dead_letter")
DESTINATION = re.compile(r"^[\x20-\x7e]{1,200}$")  # AE@host:port or a URL
UID = re.compile(r"^(?=.{1,64}$)[0-9]+(\.[0-9]+)*$")  # DICOM UIDs: digits and dots, at most 64 characters


def validate_delivery(body: dict) -> dict:
    """A gateway's report on one SR delivery: destination, status, attempts, and optionally the SR's UID
    and the last error. Only these fields are kept."""
    destination, status, attempts = body.get("destination"), body.get("status"), body.get("attempts")
    report_uid, error = body.get("report_uid"), body.get("error")
    if not isinstance(destination, str) or not DESTINATION.fullmatch(destination):
        raise InputError(400, "bad_delivery", "destination is 1-200 printable ASCII characters", "destination")
    if status not in DELIVERY_STATUSES:
        raise InputError(400, "bad_delivery", f"status is one of {DELIVERY_STATUSES}", "status")
    if isinstance(attempts, float) and attempts.is_integer():  # JSON does not tell 3 from 3.0
        attempts = int(attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 0 <= attempts <= 1000:
        raise InputError(400, "bad_delivery", "attempts is a whole number from 0 to 1000", "attempts")
    if report_uid is not None and not (
        isinstance(report_uid, str) and len(report_uid) <= 64 and UID.fullmatch(report_uid)
    ):
        raise InputError(400, "bad_delivery", "report_uid is a DICOM UID", "report_uid")
    if error is not None and not (isinstance(error, str) and len(error) <= 500):
        raise InputError(400, "bad_delivery", "error is at most 500 characters", "error")
    delivery = {"destination": destination, "status": status, "attempts": attempts}
    return delivery | {k: v for k, v in (("report_uid", report_uid), ("error", error)) if v is not None}


MAX_PAGE = 100_000  # far past any patient's history, and the skip it implies fits the database's integers
MAX_PAGE_SIZE = 100


def validate_page(page: str | None, page_size: str | None = None, default_size: int = 20) -> tuple[int, int]:
    """Listing page parameters: 1 <= page <= MAX_PAGE, 1 <= page_size <= MAX_PAGE_SIZE."""
    try:
        number, size = int(page or "1"), int(page_size or default_size)
    except ValueError:
        number = size = 0
    if not 1 <= number <= MAX_PAGE or not 1 <= size <= MAX_PAGE_SIZE:
        raise InputError(
            400, "bad_page", f"page is a whole number from 1 to {MAX_PAGE}, page_size from 1 to {MAX_PAGE_SIZE}", "page"
        )
    return number, size


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes -> a fully decoded image; 4xx ``InputError`` for anything unusable."""
    try:
        return open_export(data, max_pixels)
    except ImageDecodeError as exc:
        raise InputError(_DECODE_STATUS.get(exc.reason, 400), exc.reason, str(exc), "image") from exc


def model_levels(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """A decoded upload -> the [1, S, S] grey levels the classifier takes.

    Native levels (uint8 for 8-bit images) rather than float: 50 KB at 224 px travels inline
    with the Ray call, while float32 (200 KB) would go through the object store, which costs
    more CPU per request than decoding the PNG does.
    """
    return resize_levels(image, spec.input_size)[None]


def dicom_patient_id(data: bytes | None) -> str | None:
    """Patient ID from a DICOM upload's header (used when the form leaves it empty).

    Read even when the file is refused for other reasons, so that the answer names the real
    problem (say, a CT) rather than a missing patient ID.
    """
    if not data or sniff_format(data) != "dicom":
        return None
    return header_patient_id(data)


@dataclass
class PredictionRequest:
    """A checked request: every field valid and the image decoded."""

    patient_id: str
    request_id: str
    explain: bool
    save: bool
    data: bytes
    original: Image.Image | None  # None only in a ``NotAnalysed`` refusal: the image was never decoded
    filename: str | None = None
    dicom: DicomIdentifiers | None = None  # a DICOM upload's identifiers (study, series, instance, ...)


# Refusals of a sound radiograph that the model does not read. A DICOM instance refused for one of
# these is still recorded (as not analysed, with the reason) when saving was asked for: it came from
# the PACS with its identifiers, and the worklist must show it was seen and why it has no result.
NOT_ANALYSED_REASONS = ("dicom_not_chest", "dicom_not_frontal", "out_of_scope")


class NotAnalysed(InvalidRequest):
    """An instance refused for a ``NOT_ANALYSED_REASONS`` reason, with the request it came in."""

    def __init__(self, errors: list[InputError], request: PredictionRequest):
        super().__init__(errors)
        self.request = request

    @staticmethod
    def applies(errors: list[InputError], identifiers: DicomIdentifiers | None) -> bool:
        return bool(
            identifiers and identifiers.sop_instance_uid and len(errors) == 1 and errors[0].code in NOT_ANALYSED_REASONS
        )


def flag(value) -> bool:
    return str(value).lower() in ("1", "true", "on", "yes")


def check_request(fields: dict, data: bytes | None, max_pixels: int, filename: str | None = None) -> PredictionRequest:
    """All of a request's fields, validated; ``InvalidRequest`` lists every problem (patient ID first)."""
    errors, values = [], {}
    form_patient = (fields.get("patient_id") or "").strip()
    confirmed = flag(fields.get("confirm_patient_id", ""))
    checks = [
        ("patient_id", lambda: choose_patient_id(form_patient, dicom_patient_id(data), confirmed)),
        ("request_id", lambda: validate_request_id(fields.get("request_id")) or uuid.uuid4().hex),
        ("explain", lambda: validate_explain(fields.get("explain", ""))),
        ("image", lambda: decode_required(data, max_pixels)),
    ]
    for name, check in checks:
        try:
            values[name] = check()
        except InputError as exc:
            errors.append(exc)
    identifiers = read_identifiers(data) if data else None
    request = PredictionRequest(
        values.get("patient_id", ""),
        values.get("request_id", ""),
        values.get("explain", False),
        flag(fields.get("save", "")),
        data,
        values.get("image"),
        filename,
        identifiers,
    )
    if NotAnalysed.applies(errors, identifiers):
        raise NotAnalysed(errors, request)
    if errors:
        raise InvalidRequest(errors)
    return request


def choose_patient_id(typed: str, in_header: str | None, confirmed: bool) -> str:
    """The typed ID, else the DICOM header's; a typed ID that contradicts the header needs confirming
    (a wrong patient on a radiograph is the error this service must not make silently)."""
    if typed and in_header and typed != in_header.strip() and not confirmed:
        raise InputError(
            422,
            "patient_id_mismatch",
            "patient_id differs from the DICOM file's Patient ID; check the patient, then send "
            "confirm_patient_id=1 to use the typed one",
            "patient_id",
        )
    return validate_patient_id(typed or in_header)


def validate_explain(value: str) -> bool:
    if value not in ("", "gradcam"):
        raise InputError(400, "bad_explain", "explain must be 'gradcam' or empty", "explain")
    return value == "gradcam"


def decode_required(data: bytes | None, max_pixels: int) -> Image.Image:
    if data is None:
        raise InputError(400, "missing_image", "an 'image' file is required", "image")
    return decode_upload(data, max_pixels)


@dataclass(frozen=True)
class ReviewInput:
    verdict: str
    findings: list[str]  # what the radiologist reads as present
    comment: str


def validate_review(body: dict, record: dict) -> ReviewInput:
    """A radiologist's verdict on ``record``: ``agree``, or ``disagree`` with the findings as read
    (one label for a softmax model; any set of its labels, none included, for a multi-label one).
    400 for a body of the wrong shape; 422 for findings that do not fit this record's model."""
    verdict, findings, comment = body.get("verdict"), body.get("findings"), body.get("comment", "")
    if verdict not in VERDICTS:
        raise InputError(400, "bad_review", f"verdict is one of {VERDICTS}", "verdict")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT or not _printable_text(comment):
        raise InputError(400, "bad_review", f"comment is at most {MAX_COMMENT} characters, no control codes", "comment")
    if findings is not None and not (isinstance(findings, list) and all(isinstance(f, str) for f in findings)):
        raise InputError(400, "bad_review", "findings is a list of labels", "findings")
    if verdict == "disagree" and findings is None:
        raise InputError(400, "bad_review", "disagreeing names the findings as read (an empty list: none)", "findings")
    return ReviewInput(verdict, _fitting(verdict, findings, record), comment)


def _fitting(verdict: str, findings: list[str] | None, record: dict) -> list[str]:
    """The findings, checked against what this record's model can say and said (422 otherwise)."""
    labels = list(record["model"].get("labels") or record["probabilities"])
    predicted = findings_of(record)

    def unfit(message: str) -> InputError:
        return InputError(422, "findings_do_not_fit", message, "findings")

    if verdict == "agree":
        if findings is not None and sorted(findings) != predicted:
            raise unfit("agreeing keeps the model's findings; to change them, disagree")
        return predicted
    if not all(f in labels for f in findings):
        raise unfit(f"findings are labels of this record's model: {labels}")
    if len(set(findings)) != len(findings):
        raise unfit("a finding is named twice")
    if record["model"].get("task", "softmax") != "multilabel" and len(findings) != 1:
        raise unfit("this record's model gives one label: name the one you read")
    if sorted(findings) == predicted:
        raise unfit("these are the model's own findings: that is agree")
    return sorted(findings)


CONTROL_CODES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # what a comment may not hold


def _printable_text(text: str) -> bool:
    return CONTROL_CODES.search(text) is None
