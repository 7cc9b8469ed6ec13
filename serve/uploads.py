"""Reading request bodies: a multipart upload (fields and at most one image) or a small page form.
``serve.routes`` bounds every body while it streams in; here the parts are bounded too."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from serve.errors import InputError

MAX_FORM_FIELDS = 8
MAX_FIELD_BYTES = 64 * 1024
SMALL_FORM_FIELDS = 4
SMALL_FIELD_BYTES = 1024


@dataclass
class Upload:
    fields: dict[str, str]
    data: bytes | None = None
    filename: str | None = None


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
    except Exception as exc:  # starlette raises MultiPartException / HTTPException on limits
        raise InputError(400, "bad_form", f"the form could not be parsed: {exc}") from exc
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


async def read_small_form(request: Request) -> Upload:
    """A page's small form (login, logout, save): a few short fields, no files."""
    try:
        form = await request.form(max_files=0, max_fields=SMALL_FORM_FIELDS, max_part_size=SMALL_FIELD_BYTES)
    except BodyTooLarge:
        raise InputError(413, "too_large", "the form is larger than this page sends") from None
    except Exception as exc:
        raise InputError(400, "bad_form", f"the form could not be parsed: {exc}") from exc
    try:
        return Upload({k: v for k, v in form.items() if isinstance(v, str)})
    finally:
        await form.close()
