"""What kind of file a byte string is, where that file ends, and the error for an unusable one.

The lowest layer of image input: ``preprocessing`` and ``dicom`` both build on it, so the error
type and the magic-byte sniffing live here rather than in either of them (which import each other
otherwise).
"""

from __future__ import annotations

import re

# Decoded pixels an image may have; larger ones are refused from their header, before decoding.
MAX_PIXELS = 50_000_000

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# In entropy-coded data FF00 is a stuffed FF, FFD0-FFD7 are restart markers and FFFF is fill;
# any other FFxx ends the scan.
_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_MAGIC = b"\xff\xd8\xff"


class ImageDecodeError(ValueError):
    """An upload or data file that is not a usable image; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def sniff_format(data: bytes) -> str | None:
    """The container format from magic bytes, never from a name or Content-Type."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data[128:132] == b"DICM":  # after the 128-byte preamble
        return "dicom"
    return None


def trailing_bytes(data: bytes) -> int:
    """Bytes after a PNG's IEND chunk or a JPEG's end-of-image marker (zero padding aside).

    Anything there is a second file riding along (a polyglot: HTML, ZIP, script) or damage; an
    upload policy may refuse it. The file's own structure is walked (PNG chunks, JPEG segments and
    scans), so a fake end marker inside the payload does not fool it. A file cut short counts as
    no trailing data: decoding reports the truncation.
    """
    fmt = sniff_format(data)
    end = _png_end(data) if fmt == "png" else _jpeg_end(data) if fmt == "jpeg" else None
    return 0 if end is None else len(data[end:].rstrip(b"\0"))


def _png_end(data: bytes) -> int | None:
    pos = len(_PNG_MAGIC)
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        pos += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return pos
    return None


def _jpeg_end(data: bytes) -> int | None:
    """Offset just past the EOI marker that closes the image that begins at offset 0."""
    pos = 2  # after SOI
    while pos + 1 < len(data):
        if data[pos] != 0xFF:
            return None  # not a marker where one must be: damage that decoding will judge
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xD9:  # EOI
            return pos + 2
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone: RSTn, TEM
            pos += 2
        else:  # a segment with a length; APPn metadata (an EXIF thumbnail's own EOI) is skipped whole
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker == 0xDA:  # a scan: entropy-coded data runs to the next real marker
                in_scan = _JPEG_MARKER_IN_SCAN.search(data, pos)
                pos = len(data) if in_scan is None else in_scan.start()
    return None
