"""Helpers shared by tests across packages: generated images, DICOM files, model cards, a real database."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from cxr_model.checkpoint import ModelCard
from cxr_model.labels import COVID4, MULTICLASS
from cxr_model.preprocessing import PreprocessSpec


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_dicom(
    pixels: np.ndarray,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    body_part: str | None = "CHEST",
    patient_id: str = "DCM-0001",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    rle: bool = False,
    syntax: str | None = None,
    preamble: bytes | None = None,
    declared_shape=None,
    **flags,
) -> bytes:
    """A small single-frame DICOM radiograph file of the kind a CR/DX modality sends."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = preamble if preamble is not None else bytes(128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.Modality = patient_id, "Doe^Jane", modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if flags.get("view_position"):
        ds.ViewPosition = flags["view_position"]
    rows, columns = declared_shape or pixels.shape
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0.0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if flags.get("with_pixels", True):
        ds.PixelData = pixels.tobytes()
        if rle:
            ds.compress(RLELossless, pixels)
        elif syntax is not None:
            meta.TransferSyntaxUID = syntax
            # An already compressed frame (``encoded``), or raw bytes that only claim the syntax.
            ds.PixelData = encapsulate([flags.get("encoded") or pixels.tobytes()])
            ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_card(labels=COVID4, task=MULTICLASS, backbone="densenet121", size=64, **extra) -> ModelCard:
    return ModelCard(
        name=f"test-{backbone}",
        version="0.0.1",
        backbone=backbone,
        task=task,
        labels=list(labels),
        preprocessing=PreprocessSpec(input_size=size).to_dict(),
        **extra,
    )


IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail_in_ci(reason: str) -> None:
    """A user's own clone may lack ../shared or kubectl, and skips; CI has both, so there it fails."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must have it)")
    pytest.skip(reason)


def jpeg_bytes(array: np.ndarray, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


# One small valid file per accepted format: the starting points the decoder fuzzers mutate.
FUZZ_SEEDS = [
    png_bytes(np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)),
    jpeg_bytes(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)),
    make_dicom(np.full((24, 24), 1000, np.uint16), bits_stored=12),
]


def j2k_codestream(pixels: np.ndarray, claimed: tuple[int, int] | None = None) -> bytes:
    """A real JPEG 2000 codestream; ``claimed`` rewrites its SIZ marker's size, as an attacker would."""
    import struct

    import openjpeg

    stream = bytearray(openjpeg.encode(pixels, bits_stored=12, codec_format=0))  # a bare J2K codestream
    if claimed is not None:
        at = stream.find(b"\xff\x4f\xff\x51")
        stream[at + 8 : at + 16] = struct.pack(">II", *claimed)
    return bytes(stream)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MongoServer:
    """secantusd-py as its own process; stop/start simulate an outage on the same port and data."""

    def __init__(self, storage: Path):
        self.storage = storage
        self.port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        self.process = None

    def start(self) -> None:
        command = str(Path(sys.executable).with_name("secantusd-py"))
        self.process = subprocess.Popen(
            [
                command,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                str(self.storage),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                MongoClient(self.uri, serverSelectionTimeoutMS=300).admin.command("ping")
                return
            except PyMongoError:
                time.sleep(0.2)
        raise RuntimeError("secantusd-py did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


# What `cxr evaluate` (and training's test-split evaluation) writes.
REPORT_FILES = (
    "report.json",
    "report.md",
    "per_class.csv",
    "predictions.csv",
    "confusion_matrix.png",
    "roc.png",
    "reliability.png",
)


def study_instance(pixels: np.ndarray, bits_stored: int, patient_id: str, **flags) -> bytes:
    """``make_dicom`` plus what a modality always sends: study and series UIDs, dates, accession,
    referring physician, imager pixel spacing. What PACS workflows and structured reports need."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(make_dicom(pixels, bits_stored, patient_id=patient_id, **flags)))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261129", "101500", "1", f"ACC-{patient_id}"
    ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "Ref^Doc", "19600101", "F"
    ds.ImagerPixelSpacing, ds.SeriesNumber, ds.InstanceNumber = [0.15, 0.15], 1, 1
    ds.ViewPosition = "PA"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class OrthancServer:
    """Debian's Orthanc with the DICOMweb plugin, as a foreground process with its own config."""

    def __init__(self, root: Path, modalities: dict[str, list]):
        self.http_port, self.dicom_port, self.root = free_port(), free_port(), root
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "cxr-test-pacs",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{self.http_port}"},
            "DicomModalities": modalities,
            "ConcurrentJobs": 2,
            "DicomAssociationCloseDelay": 0,
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / "orthanc.json").write_text(json.dumps(config))
        self.process = None

    def start(self) -> "OrthancServer":
        import httpx

        env = {**os.environ, "TCP_NODELAY": "1"}
        self.process = subprocess.Popen(
            ["/usr/sbin/Orthanc", str(self.root / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
