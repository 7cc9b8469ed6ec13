"""Hostile uploads, one row each: the status and code they get, nothing stored, nothing echoed.

Every row goes through real HTTP to the running service (real Ray, real SecantusDB).
"""

from __future__ import annotations

import io
import zipfile
import zlib

import pytest

from tests.serve.helpers import chest_png, csrf_token, stored_counts

SCRIPT = "<script>alert(1)</script>"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def huge_png_header() -> bytes:
    """A valid PNG signature and IHDR claiming 100000 x 100000 pixels, no real pixel data."""
    ihdr = (100000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + _png_chunk(b"IEND", b"")
    )


def png_zip_polyglot() -> bytes:
    """A real chest PNG that is also a ZIP archive (the archive appended after IEND)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("payload.html", f"<html>{SCRIPT}</html>")
    return chest_png(8) + archive.getvalue()


def png_with_fake_end() -> bytes:
    """HTML after the image, ending in a forged IEND chunk to look like the end of the PNG."""
    return chest_png(9) + f"<html>{SCRIPT}</html>".encode() + _png_chunk(b"IEND", b"")


def jpeg_html_polyglot() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(chest_png(10))).save(buffer, "JPEG")
    return buffer.getvalue() + f"<html>{SCRIPT}</html>".encode()


def form(image: bytes | None = None, filename: str = "cxr.png", content_type: str = "image/png", **fields) -> dict:
    """httpx keyword arguments for a multipart upload: a chest PNG and patient P-HOSTILE-1 unless told."""
    data = {"patient_id": "P-HOSTILE-1", "save": "1", **fields}
    return {"data": data, "files": {"image": (filename, chest_png(7) if image is None else image, content_type)}}


def many_fields() -> dict:
    request = form()
    request["data"].update({f"field{i}": "x" for i in range(200)})
    return request


def two_files() -> dict:
    return {
        "data": {"patient_id": "P-HOSTILE-1", "save": "1"},
        "files": [("image", ("a.png", chest_png(7), "image/png")), ("image", ("b.png", chest_png(8), "image/png"))],
    }


def chunked_oversized() -> dict:
    """26 MB with no Content-Length (chunked): the limit holds while the body streams in."""
    boundary = "hostileboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="patient_id"\r\n\r\nP-HOSTILE-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body():
        yield head + b"\x89PNG\r\n\x1a\n"
        for _ in range(26 * 16):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    return {"content": body(), "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


# name, request (httpx keyword arguments), status, error code
HOSTILE = [
    ("zero-byte file", form(b""), 400, "empty"),
    ("text, not an image", form(b"just some text"), 415, "not_an_image"),
    ("truncated PNG", form(chest_png(6)[:2000]), 422, "truncated"),
    ("huge-dimension PNG header", form(huge_png_header()), 413, "too_many_pixels"),
    ("PNG+ZIP polyglot", form(png_zip_polyglot()), 422, "trailing_data"),
    ("PNG+HTML with a forged end", form(png_with_fake_end()), 422, "trailing_data"),
    ("JPEG+HTML polyglot", form(jpeg_html_polyglot(), "x.jpg", "image/jpeg"), 422, "trailing_data"),
    ("HTML named .png as image/png", form(f"<html>{SCRIPT}</html>".encode()), 415, "not_an_image"),
    ("script file as .jpg", form(b"GIF89a/*" + SCRIPT.encode(), "x.jpg", "image/jpeg"), 415, "not_an_image"),
    ("oversized body", form(b"\x89PNG\r\n\x1a\n" + b"\0" * (26 * 1024 * 1024)), 413, "too_large"),
    ("oversized chunked body", chunked_oversized(), 413, "too_large"),
    ("not multipart", {"json": {"patient_id": "P-1", "image": "aGk="}}, 415, "not_multipart"),
    ("many form fields", many_fields(), 400, "bad_form"),
    ("two files", two_files(), 400, "bad_form"),
    ("no patient ID", form(patient_id=""), 400, "missing_patient_id"),
    ("patient ID as an operator document", form(patient_id='{"$ne": null}'), 400, "bad_patient_id"),
    (
        "patient ID as a [$ne] form field",
        {"data": {"patient_id[$ne]": "x", "save": "1"}, "files": {"image": ("cxr.png", chest_png(7), "image/png")}},
        400,
        "missing_patient_id",
    ),
    ("patient ID $where", form(patient_id="$where"), 400, "bad_patient_id"),
    ("script in patient ID", form(patient_id=SCRIPT), 400, "bad_patient_id"),
    ("script in request ID", form(request_id=SCRIPT), 400, "bad_request_id"),
    ("script in explain", form(explain=SCRIPT), 400, "bad_explain"),
]


@pytest.mark.parametrize("name, request_kwargs, status, code", HOSTILE, ids=[row[0] for row in HOSTILE])
def test_hostile_upload_gets_its_4xx_stores_nothing_and_echoes_nothing(service, db, name, request_kwargs, status, code):
    before = stored_counts(db)
    response = service.http.post("/api/v1/predictions", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert "<script" not in response.text and "<html" not in response.text
    assert stored_counts(db) == before


def test_a_real_image_with_a_misleading_name_and_type_is_judged_by_its_bytes(service, db):
    response = service.http.post("/api/v1/predictions", **form(filename="report.pdf", content_type="application/pdf"))
    assert response.status_code == 200, response.text
    assert response.json()["saved"] is True


@pytest.mark.parametrize("field, value", [("patient_id", SCRIPT), ("request_id", SCRIPT), ("explain", SCRIPT)])
def test_the_page_form_escapes_what_it_refuses(service, db, field, value):
    before = stored_counts(db)
    request = form(**{field: value, "csrf_token": csrf_token(service)})
    response = service.http.post("/predictions", **request, follow_redirects=False)
    assert response.status_code == 400
    assert SCRIPT not in response.text and "<script>alert" not in response.text
    assert stored_counts(db) == before
