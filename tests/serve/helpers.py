"""Helpers shared by the serve tests: images to upload, page posts, stored-record checks."""

from __future__ import annotations

import io
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesParser
from urllib.parse import parse_qs, unquote

import httpx
import numpy as np
import pydicom

from serve.records import now, request_fingerprint
from tests.helpers import png_bytes, study_instance
from training.synthetic import render_chest

COVID4 = ["COVID-19", "Lung Opacity", "Normal", "Viral Pneumonia"]
HX = {"HX-Request": "true"}
NOTICE = "Decision support only - not for diagnostic use"
MODEL = {
    "name": "m",
    "version": "1",
    "weights_sha256": "ab" * 32,
    "preprocessing_version": "cxr-pre-1",
    "thresholds": [],
    "calibration_temperature": 1.3,
    "code_version": "0.1.0",
}


def chest_png(seed: int = 0, label: str = "Normal") -> bytes:
    pixels = (render_chest(label, np.random.default_rng(seed)) * 255).astype(np.uint8)
    return png_bytes(pixels)


def chest_dicom(seed: int, patient: str, body_part: str = "CHEST", **attributes) -> bytes:
    """A synthetic chest DX as a modality sends it (study, series, accession), with any header
    attribute changed by keyword (``ViewPosition="LL"``, ``AccessionNumber=...``)."""
    pixels = (render_chest("Normal", np.random.default_rng(seed)) * 4095).astype(np.uint16)
    ds = pydicom.dcmread(io.BytesIO(study_instance(pixels, 12, patient)))
    ds.BodyPartExamined = body_part
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def uid_of(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)


def stored_counts(db) -> tuple[int, int]:
    return db["predictions"].count_documents({}), db["images.files"].count_documents({})


def stored_record(**overrides) -> dict:
    """A record as the service stores it (without its files)."""
    base = {
        "request_id": f"req-{uuid.uuid4().hex}",
        "patient_id": "ST-0001",
        "created_at": now(),
        "probabilities": {"Normal": 0.8, "COVID-19": 0.2},
        "top_label": "Normal",
        "confidence": 0.8,
        "positives": ["Normal"],
        "model": MODEL,
        "created_by": "ward-7",
        "created_by_key": "k-ward-7",
    }
    record = {**base, **overrides}
    record.setdefault("request_fingerprint", request_fingerprint(record["patient_id"], b"o"))
    return record


def csrf_token(service) -> str:
    """What a browser has after loading any page: the cookie (kept by the client) and the field."""
    return re.search(r'name="csrf_token" value="([^"]+)"', service.http.get("/").text).group(1)


def save_held(service, request_id: str, **kwargs):
    return service.http.post(
        "/predictions/save", data={"request_id": request_id, "csrf_token": csrf_token(service)}, **kwargs
    )


def post_prediction(service, image: bytes | None, htmx: bool = False, filename: str = "cxr.png", **fields):
    """The new-prediction page's form post, as a browser sends it."""
    data = {"patient_id": "P-PAGE-1", "request_id": uuid.uuid4().hex, "csrf_token": csrf_token(service), **fields}
    empty = {"image": ("", b"", "application/octet-stream")}
    files = {"image": (filename, image, "image/png")} if image is not None else empty
    return service.http.post("/predictions", data=data, files=files, headers=HX if htmx else {}, follow_redirects=False)


def is_full_page(html: str) -> bool:
    return html.lstrip().lower().startswith("<!doctype html>") and NOTICE in html


# Every patient ID the suite sends to the service, whatever became of the request (refused, not
# saved, saved, searched): the log scan looks for each of them.
SENT_PATIENT_IDS: set[str] = set()
_PATIENT_PATH = re.compile(r"/patients/([^/?]+)/predictions")


def _form_parts(content_type: str, body: bytes):
    message = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return message.get_payload() if message.is_multipart() else []


def record_sent_patient_ids(request: httpx.Request) -> None:
    """httpx request hook: note the patient IDs a request carries (form field, DICOM header, URL)."""
    found = set(parse_qs(request.url.query.decode()).get("patient_id", []))
    found |= {unquote(m) for m in _PATIENT_PATH.findall(request.url.path)}
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        for part in _form_parts(content_type, request.read()):
            name, payload = part.get_param("name", header="content-disposition"), part.get_payload(decode=True)
            if name == "patient_id":
                found.add(payload.decode(errors="replace"))
            elif name == "image" and payload and payload[128:132] == b"DICM":
                try:
                    found.add(str(pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True).PatientID))
                except Exception:  # a deliberately broken file: its ID, if any, is not readable by anyone
                    pass
    elif content_type.startswith("application/x-www-form-urlencoded"):
        found |= set(parse_qs(request.read().decode(errors="replace")).get("patient_id", []))
    SENT_PATIENT_IDS.update(p.strip() for p in found if p.strip())


def client(base_url: str, **kwargs) -> httpx.Client:
    """An HTTP client of the suite's: every patient ID it sends is noted for the log scan."""
    return httpx.Client(base_url=base_url, event_hooks={"request": [record_sent_patient_ids]}, **kwargs)


def metric_total(metrics_url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus series over every replica, for the samples carrying these labels."""
    text = httpx.get(metrics_url, timeout=10).text
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(w in line for w in wanted)
    )


def replica_pids(deployment: str) -> set[int]:
    """The OS processes of a deployment's live replicas, asked of each replica actor itself."""
    import ray

    pids = set()
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and f"#{deployment}#" in actor["name"]:
            try:
                handle = ray.get_actor(actor["name"], namespace="serve")
                pids.add(ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=30))
            except (ray.exceptions.RayError, ValueError):
                pass  # a replica that is stopping
    return pids


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


class SteadyLoad:
    """Two clients posting predictions back to back (bounded) until stopped; statuses in order (0 for
    a request that got no HTTP answer)."""

    def __init__(self, service, patient_id: str):
        self.service, self.patient_id = service, patient_id
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(2)

    def _client(self, seed: int) -> None:
        with client(self.service.base_url, timeout=60, headers=self.service.http.headers) as http:
            for i in range(400):  # bounded even if the stop never comes
                if self.stop.is_set():
                    return
                try:
                    status = http.post(
                        "/api/v1/predictions",
                        data={"patient_id": self.patient_id},
                        files={"image": ("c.png", chest_png(seed * 1000 + i % 7), "image/png")},
                    ).status_code
                except httpx.TransportError:
                    status = 0  # no HTTP answer at all (connection refused or reset): a failure too
                self.statuses.append(status)
                time.sleep(0.05)

    def __enter__(self) -> SteadyLoad:
        self.clients = [self.pool.submit(self._client, seed) for seed in (1, 2)]
        wait_until(lambda: len(self.statuses) >= 10, 60, "steady traffic")
        return self

    def more(self, count: int, what: str) -> list[int]:
        """Wait for `count` more answers; return every status answered since the call."""
        seen = len(self.statuses)
        wait_until(lambda: len(self.statuses) >= seen + count, 120, what)
        return self.statuses[seen:]

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for future in self.clients:
            future.result()
        self.pool.shutdown()

    @property
    def success_rate(self) -> float:
        return sum(status == 200 for status in self.statuses) / len(self.statuses)


def mount_secret(folder, values: dict) -> None:
    """A Secret volume as the kubelet writes it: each key a symlink into a timestamped folder
    through ``..data``, which it swaps atomically on update."""
    stamped = folder / "..2026_12_06_12_00_00.000000001"
    stamped.mkdir(parents=True)
    for name, value in values.items():
        (stamped / name).write_text(value)
        (folder / name).symlink_to(f"..data/{name}")
    (folder / "..data").symlink_to(stamped.name)
