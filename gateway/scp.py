"""The DICOM Storage SCP: C-ECHO and C-STORE for CR, DX and Secondary Capture, from listed AEs only.

A C-STORE is answered success only once ``Spool.put`` has the instance on disk; a full spool answers
0xA700 (Out of Resources), so the sender keeps the instance and retries later. pynetdicom refuses
associations from calling AE titles outside the allow-list (``require_calling_aet``) before any
data is sent.
"""

from __future__ import annotations

import logging
import socket

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)

from gateway.metrics import RECEIVED
from gateway.spool import Spool, SpoolFull

log = logging.getLogger(__name__)

STORAGE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
# What the service's decoder (pydicom with pylibjpeg) can read; anything else is negotiated away.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
]
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


def handle_store(event, spool: Spool) -> int:
    status = _store(str(event.request.AffectedSOPInstanceUID), event, spool)
    outcome = {SUCCESS: "stored", OUT_OF_RESOURCES: "out_of_resources"}.get(status, "refused")
    RECEIVED.labels(outcome).inc()
    return status


def received_file(event) -> bytes:
    """The instance as received (the data set's bytes untouched) in the DICOM file format, its File
    Meta Information naming who sent it and to whom (PS3.10: Sending and Receiving Application Entity
    Title): the modality or PACS that sent it travels with it through the spool to the record."""
    meta = event.file_meta
    meta.SendingApplicationEntityTitle = event.assoc.requestor.ae_title
    meta.ReceivingApplicationEntityTitle = event.assoc.acceptor.ae_title
    return b"".join((b"\x00" * 128, b"DICM", encode_file_meta(meta), event.request.DataSet.getvalue()))


def _store(uid: str, event, spool: Spool) -> int:
    try:
        spool.put(uid, received_file(event))
    except SpoolFull:
        log.warning("spool full: C-STORE of %s refused with Out of Resources", uid)
        return OUT_OF_RESOURCES
    except ValueError:
        return CANNOT_UNDERSTAND
    except OSError:  # the disk itself failed: the sender keeps the instance
        log.exception("spool write failed")
        return OUT_OF_RESOURCES
    return SUCCESS


def no_delay(event) -> None:
    """Nagle's algorithm stalls each small C-STORE 40-90 ms on loopback; pynetdicom has no option."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def build_ae(ae_title: str, allow_ae: list[str]) -> AE:
    if not allow_ae:
        raise ValueError("at least one calling AE title must be allowed (--allow-ae)")
    ae = AE(ae_title=ae_title)
    for sop_class in STORAGE_CLASSES:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.require_calling_aet = list(allow_ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
    return ae


def start_scp(ae: AE, host: str, port: int, spool: Spool):
    """Serve in background threads; returns the server (``shutdown()`` stops it)."""
    handlers = [
        (evt.EVT_C_STORE, handle_store, [spool]),
        (evt.EVT_C_ECHO, lambda event: SUCCESS),
        (evt.EVT_CONN_OPEN, no_delay),
    ]
    return ae.start_server((host, port), block=False, evt_handlers=handlers)
