"""The image size a compressed DICOM frame's own codestream declares, read before any decoding.

A decoder allocates what its codestream declares, whatever the DICOM header's Rows and Columns say:
a 512x512 header over a JPEG 2000 codestream of 40000x40000 would allocate gigabytes before pydicom
compares the two. So the codestream's size is read here from its first markers (JPEG 2000 SIZ or
JP2 ihdr, JPEG and JPEG-LS SOFn) and checked against the pixel budget and the header first.
"""

from __future__ import annotations

import struct

J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_IHDR = b"ihdr"
# Start-of-frame markers: baseline/extended/progressive/lossless JPEG (not DHT C4, JPG C8, DAC CC) and JPEG-LS F7.
SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length


def jpeg2000_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a J2K codestream's SIZ marker, or a JP2 file's ihdr box."""
    at = data.find(J2K_SOC_SIZ)
    if at >= 0 and len(data) >= at + 24:
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[at + 8 : at + 24])
        return xsiz - xosiz, ysiz - yosiz
    at = data.find(JP2_IHDR)
    if at >= 0 and len(data) >= at + 12:
        height, width = struct.unpack(">II", data[at + 4 : at + 12])
        return width, height
    return None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment of a JPEG or JPEG-LS stream."""
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in STANDALONE:
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if marker in SOF_MARKERS and at + 9 <= len(data):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def declared_size(frame: bytes) -> tuple[int, int] | None:
    """The size an encapsulated frame's codestream declares; None when it names none (e.g. RLE)."""
    return jpeg_size(frame) or jpeg2000_size(frame[:4096])
