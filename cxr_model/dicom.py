"""DICOM radiographs (CR/DX) -> the same grey-level images PNG and JPEG uploads become.

Headers are read and checked before any pixel is touched. Checked are: pixel data present,
modality, rows x columns x frames within the budget, a transfer syntax that an installed decoder
can handle, a body part that is the chest and a frontal view (PA or AP) when the header states
them. Then pixels go through the modality LUT (rescale slope/intercept) and the VOI LUT or window when present.
MONOCHROME1 is inverted so that bone is bright. The result is a 16-bit greyscale image, which
preprocessing treats like any 16-bit PNG.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cxr_model.codestream import declared_size
from cxr_model.formats import ImageDecodeError

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
MODALITIES = {"CR", "DX"}  # computed and digital radiography
CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "CHEST_LAT", "PORT CHEST", "PORTABLE CHEST"}
# (0018,5101) View Position, DICOM CID 4010 terms: the model reads frontal films only; a lateral or
# oblique view is not analysed. Absent or empty means unstated, and is analysed like a PNG.
FRONTAL_VIEWS = {"PA", "AP"}
PREAMBLE = 128


class DicomError(ImageDecodeError):
    """A DICOM file refused, with a stable ``reason`` code like any other undecodable upload."""


@dataclass(frozen=True)
class DicomIdentifiers:
    """What names a received instance in the PACS, stored with its record (DICOM keywords, snake_case)."""

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    view_position: str | None = None
    # From the File Meta Information (PS3.10): the AE that sent the instance over the network, which
    # the DICOM gateway records there: the modality or PACS node, i.e. where in the hospital it came from.
    sending_application_entity_title: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {name: value for name, value in vars(self).items() if value}


IDENTIFIER_KEYWORDS = {
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
    "sop_class_uid": "SOPClassUID",
    "accession_number": "AccessionNumber",
    "modality": "Modality",
    "body_part_examined": "BodyPartExamined",
    "view_position": "ViewPosition",
}
MAX_IDENTIFIER_LENGTH = 64  # the longest UI, SH and CS values allow; anything longer is not DICOM
MAX_AE_TITLE_LENGTH = 16  # the AE VR


@dataclass(frozen=True)
class DicomHeader:
    patient_id: str | None
    modality: str | None
    body_part: str | None
    rows: int
    columns: int
    frames: int
    bits_stored: int
    photometric: str
    transfer_syntax: str


def is_dicom(data: bytes) -> bool:
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def _dataset(data: bytes, header_only: bool):
    import pydicom
    from pydicom import config

    # Untrusted input: pydicom's validation would warn and log offending values, which can be
    # names and IDs. We check what we rely on ourselves.
    config.settings.reading_validation_mode = config.IGNORE
    try:
        # Header only: large values (the pixel data) stay deferred, never read from the bytes.
        return pydicom.dcmread(io.BytesIO(data), defer_size=1024 if header_only else None)
    except Exception as exc:  # any parser failure on a corrupt file; the message names no values
        raise DicomError("not_an_image", f"the DICOM header cannot be read ({type(exc).__name__})") from exc


def _decodable(transfer_syntax) -> bool:
    from pydicom.pixels.decoders.base import get_decoder

    if not transfer_syntax.is_compressed:
        return True
    try:
        return get_decoder(transfer_syntax).is_available
    except (NotImplementedError, ValueError):
        return False


def header_patient_id(data: bytes) -> str | None:
    """(0010,0020) Patient ID alone, whatever else is wrong with the file; None if unreadable."""
    try:
        value = _dataset(data, header_only=True).get("PatientID", "")
        return str(value or "").strip() or None
    except Exception:  # elements are parsed lazily: a corrupt one can fail on access
        return None


def read_identifiers(data: bytes) -> DicomIdentifiers | None:
    """The instance's identifiers, whatever else is wrong with it; None when no header can be read.
    Values that could not be real DICOM (too long, control characters) are left out, not stored."""
    if not data or not is_dicom(data):
        return None
    try:
        ds = _dataset(data, header_only=True)
        values = {name: str(ds.get(keyword, "") or "").strip() for name, keyword in IDENTIFIER_KEYWORDS.items()}
        meta = getattr(ds, "file_meta", None) or {}
        sender = str(meta.get("SendingApplicationEntityTitle", "") or "").strip()
        values["sending_application_entity_title"] = sender if len(sender) <= MAX_AE_TITLE_LENGTH else ""
    except Exception:  # a corrupt element, parsed lazily on access
        return None
    return DicomIdentifiers(
        **{
            name: value
            for name, value in values.items()
            if value and len(value) <= MAX_IDENTIFIER_LENGTH and value.isprintable()
        }
    )


def read_header(data: bytes, max_pixels: int) -> DicomHeader:
    """Header only (pixels skipped); every refusal before decoding happens here."""
    try:
        return _read_header(data, max_pixels)
    except DicomError:
        raise
    except Exception as exc:  # a corrupt element, parsed lazily on access
        raise DicomError("not_an_image", f"the DICOM header is corrupt ({type(exc).__name__})") from exc


def _read_header(data: bytes, max_pixels: int) -> DicomHeader:
    ds = _dataset(data, header_only=True)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise DicomError("not_an_image", "the DICOM file has no transfer syntax")
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        raise DicomError("dicom_no_pixels", "the DICOM file holds no image (no pixel data)")
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows < 1 or columns < 1:
        raise DicomError("dicom_no_pixels", "the DICOM image has no pixels")
    if rows * columns * frames > max_pixels:
        raise DicomError(
            "too_many_pixels", f"{columns}x{rows}x{frames} frames exceeds the limit of {max_pixels} pixels"
        )
    modality = str(ds.get("Modality", "") or "").upper() or None
    if modality not in MODALITIES:
        raise DicomError("dicom_modality", f"modality {modality or 'unknown'} is not a radiograph (CR or DX)")
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper() or None
    if body_part is not None and body_part not in CHEST_PARTS:
        raise DicomError("dicom_not_chest", f"the header says body part {body_part}, not the chest")
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view and view not in FRONTAL_VIEWS:
        raise DicomError("dicom_not_frontal", f"the header says view position {view}; only PA and AP films are read")
    if not _decodable(syntax):
        raise DicomError(
            "dicom_unsupported_syntax", f"transfer syntax {syntax.name} ({syntax}) has no decoder installed here"
        )
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(
            "dicom_not_greyscale", f"photometric interpretation {photometric or 'unknown'} is not greyscale"
        )
    patient_id = str(ds.get("PatientID", "") or "").strip() or None
    return DicomHeader(
        patient_id, modality, body_part, rows, columns, frames, int(ds.get("BitsStored", 16)), photometric, str(syntax)
    )


def _first_frame(ds, frames: int) -> bytes | None:
    from pydicom.encaps import generate_frames

    try:
        return next(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception:  # corrupt encapsulation: the decoder's own error reports it
        return None


def _check_codestream(ds, header: DicomHeader, max_pixels: int) -> None:
    """A compressed frame's codestream must declare the header's size, within the budget, before a
    decoder sees it (decoders allocate what the codestream declares)."""
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    frame = _first_frame(ds, header.frames)
    size = declared_size(frame) if frame else None
    if size is None:
        return
    width, height = size
    if width * height * header.frames > max_pixels:
        raise DicomError(
            "too_many_pixels", f"the compressed image declares {width}x{height} pixels, over the limit of {max_pixels}"
        )
    if (width, height) != (header.columns, header.rows):
        raise DicomError(
            "dicom_inconsistent",
            f"the compressed image is {width}x{height} but the header says {header.columns}x{header.rows}",
        )


def decode(data: bytes, max_pixels: int) -> tuple[Image.Image, DicomHeader]:
    """Checked header, then a 16-bit greyscale PIL image of the first frame."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    header = read_header(data, max_pixels)
    ds = _dataset(data, header_only=False)
    _check_codestream(ds, header, max_pixels)
    try:
        pixels = ds.pixel_array
        if header.frames > 1:
            pixels = pixels[0]
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        if "VOILUTSequence" in ds or "WindowCenter" in ds:
            values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
    except Exception as exc:  # truncated or corrupt pixel data or LUTs
        raise DicomError("truncated", f"the DICOM pixel data cannot be decoded ({type(exc).__name__})") from exc
    if values.ndim != 2 or not np.isfinite(values).all():
        raise DicomError("truncated", "the DICOM pixel data is not one finite greyscale frame")
    low, high = float(values.min()), float(values.max())
    inverted = header.photometric == "MONOCHROME1"  # stored inverted: high values are dark
    if high > low:
        # Inverted before dividing, on the stored values: high - v is then exactly its MONOCHROME2
        # twin's v - low, so both decode bit for bit alike (1 - x can round the other way at a .5 tie).
        scaled = ((high - values) if inverted else (values - low)) / (high - low)
    else:
        scaled = np.full_like(values, 1.0 if inverted else 0.0)
    return Image.fromarray((scaled * 65535.0).round().astype(np.uint16)), header
