"""A Secondary Capture of the annotated radiograph, for PACS viewers that do not display SR.

The same picture the pages show (``cxr_model.annotate``: the finding and its probability in a
banner, with the "not for diagnostic use" notice burnt in), as an RGB Secondary Capture Image
(highdicom) in the source's study, in its own series after the SR's: a reader sees it beside the
original in any viewer. ``BurnedInAnnotation`` is YES, as the text is part of the pixels.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from cxr_model.annotate import DEMO_NOTICE, NOTICE, annotate, caption
from cxr_model.dicom import decode
from cxr_model.structured_report import result_uid

SERIES_NUMBER = 991  # after the SR's 990
SERIES_DESCRIPTION = "CXR AI triage annotated image - not for diagnostic use"


def build_capture(source_bytes: bytes, answer: dict, max_pixels: int) -> Dataset:
    """The annotated Secondary Capture for one analysed instance; ``answer`` is the service's
    prediction (``top_label``, ``confidence``, ``model``)."""
    source = pydicom.dcmread(io.BytesIO(source_bytes))
    image, _ = decode(source_bytes, max_pixels)
    notice = DEMO_NOTICE if answer["model"].get("synthetic_demo") else NOTICE
    pixels = np.asarray(annotate(image, caption(answer["top_label"], answer["confidence"]), notice).convert("RGB"))
    stated = [str(v) for v in source.get("PatientOrientation") or []]
    # As the modality stated it, else how a frontal chest film is displayed (patient's left, feet).
    orientation = tuple(stated) if len(stated) == 2 and all(stated) else ("L", "F")
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=result_uid(source, answer["model"], "capture", "series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=result_uid(source, answer["model"], "capture", "instance"),
        instance_number=1,
        manufacturer="CXR Serve",
        patient_orientation=orientation,
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
    )
    capture.SeriesDescription = SERIES_DESCRIPTION
    capture.BurnedInAnnotation = "YES"
    # Chest is unpaired: stating it makes Laterality (Type 2C) not required.
    capture.BodyPartExamined = str(source.get("BodyPartExamined") or "CHEST")
    return capture
