"""Reading request bodies: a multipart upload (fields and at most one image), a batch of images with
one JSON ``items`` field, or a small page form. ``serve.routes`` bounds every body while it streams
in; here the parts are bounded too."""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.requests import Request

from serve.errors import InputError

MAX_FORM_FIELDS = 8
MAX_FIELD_BYTES = 64 * 1024
ITEM_FIELDS = ("patient_id", "request_id", "save", "confirm_patient_id", "explain")  # one batch item's
ITEM_JSON_BYTES = 1024  # per item of the ``items`` field
SMALL_FORM_FIELDS = 4
SMALL_FIELD_BYTES = 1024


@dataclass
class Upload:
    fields: dict[str, str]
    data: bytes | None = None
    filename: str | None = None


def form_error(exc: Exception, too_large: InputError) -> InputError:
    """What a form parser's refusal means. Inside an app Starlette turns its parser's limit errors
    into ``HTTPException(400)``; an oversized field is a body too large (413) whichever limit the
    stream meets first, the field's or the route's (that depends on how the server chunks the body)."""
    detail = str(getattr(exc, "detail", None) or exc)
    if "exceeded maximum size" in detail:
        return too_large
    return InputError(400, "bad_form", f"the form could not be parsed: {detail}")


class BodyTooLarge(Exception):
    """The body went past its route's limit while streaming in (``serve.routes.bounded``)."""


async def read_upload(request: Request, max_bytes: int, image_required: bool = True) -> Upload:
    """Multipart form -> fields and at most one image, refusing oversized bodies before parsing."""
    limit = max_bytes + MAX_FIELD_BYTES * MAX_FORM_FIELDS  # the image and its few small fields
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(413, "too_large", f"the upload exceeds {max_bytes} bytes", "image")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InputError(415, "not_multipart", "send multipart/form-data with an 'image' file")
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except BodyTooLarge:
        raise InputError(413, "too_large", f"the upload exceeds {max_bytes} bytes", "image") from None
    except Exception as exc:
        raise form_error(exc, InputError(413, "too_large", f"a form field exceeds {MAX_FIELD_BYTES} bytes")) from exc
    try:
        upload = Upload({k: v for k, v in form.items() if isinstance(v, str)})
        file = form.get("image")
        if file is not None and not isinstance(file, str):
            data = await file.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise InputError(413, "too_large", f"the image exceeds {max_bytes} bytes", "image")
            if data or file.filename:  # a browser's empty file input sends neither
                upload.data, upload.filename = data, file.filename
        if upload.data is None and image_required:
            raise InputError(400, "missing_image", "an 'image' file is required", "image")
        return upload
    finally:
        await form.close()


def _item_fields(index: int, item) -> dict[str, str]:
    """One ``items`` entry -> the same string fields a single upload sends."""
    if not isinstance(item, dict) or set(item) - set(ITEM_FIELDS):
        raise InputError(400, "bad_items", f"items[{index}] must be an object with only {', '.join(ITEM_FIELDS)}")
    fields = {}
    for key, value in item.items():
        if isinstance(value, bool):
            value = "1" if value else ""
        if not isinstance(value, str):
            raise InputError(400, "bad_items", f"items[{index}].{key} must be a string or a boolean", "items")
        fields[key] = value
    return fields


def _parse_items(raw, count: int) -> list[dict[str, str]]:
    if not isinstance(raw, str):
        raise InputError(400, "missing_items", "an 'items' field (a JSON array, one object per image) is required")
    try:
        items = json.loads(raw)
    except ValueError:
        raise InputError(400, "bad_items", "items must be a JSON array of objects", "items") from None
    if not isinstance(items, list):
        raise InputError(400, "bad_items", "items must be a JSON array of objects", "items")
    if len(items) != count:
        raise InputError(
            400, "items_mismatch", f"{len(items)} items for {count} images: send one item per image, in order", "items"
        )
    return [_item_fields(i, item) for i, item in enumerate(items)]


async def read_batch(request: Request, max_image_bytes: int, max_items: int) -> list[Upload]:
    """Multipart form with ``items`` (JSON, one object per image) and 1..max_items ``image`` files."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InputError(415, "not_multipart", "send multipart/form-data with an 'items' field and 'image' files")
    try:
        form = await request.form(
            max_files=max_items, max_fields=1, max_part_size=max(MAX_FIELD_BYTES, ITEM_JSON_BYTES * max_items)
        )
    except BodyTooLarge:
        raise InputError(413, "too_large", "the batch exceeds its byte limit", "image") from None
    except Exception as exc:  # too many files or fields, a broken body
        error = form_error(exc, InputError(413, "too_large", "the items field is too large", "items"))
        if error.status == 400:
            error = InputError(400, "bad_form", f"{error} (at most {max_items} images)")
        raise error from exc
    try:
        files = [v for k, v in form.multi_items() if k == "image" and not isinstance(v, str)]
        if not files:
            raise InputError(400, "missing_image", "at least one 'image' file is required", "image")
        uploads = []
        for fields, file in zip(_parse_items(form.get("items"), len(files)), files):
            data = await file.read(max_image_bytes + 1)
            if len(data) > max_image_bytes:
                raise InputError(413, "too_large", f"an image exceeds {max_image_bytes} bytes", "image")
            uploads.append(Upload(fields, data, file.filename))
        return uploads
    finally:
        await form.close()


async def json_body(request: Request, fields: str = "") -> dict:
    """An API request's JSON object body; 400 for anything else."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise InputError(400, "bad_json", f"send a JSON object{': ' + fields if fields else ''}")
    return body


async def read_small_form(
    request: Request, max_fields: int = SMALL_FORM_FIELDS, max_field_bytes: int = SMALL_FIELD_BYTES
) -> Upload:
    """A page's small form (login, logout, save, a review): a few short fields, no files."""
    try:
        form = await request.form(max_files=0, max_fields=max_fields, max_part_size=max_field_bytes)
    except BodyTooLarge:
        raise InputError(413, "too_large", "the form is larger than this page sends") from None
    except Exception as exc:
        raise form_error(exc, InputError(413, "too_large", "the form is larger than this page sends")) from exc
    try:
        return Upload({k: v for k, v in form.items() if isinstance(v, str)})
    finally:
        await form.close()
