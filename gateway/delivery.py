"""Delivery: sends result objects (the SR, and the annotated Secondary Capture when asked for) back
to the PACS, one outbox per destination.

The forwarder writes each result into every destination's outbox (a ``Spool``: on disk before the
source instance leaves the spool, so a crash loses neither). A sender per destination stores them,
by DIMSE C-STORE to ``AE@host:port`` or by DICOMweb STOW-RS to a URL, and removes each once the
PACS answers success. Failures are retried with backoff; after ``max_attempts`` the object moves to
that outbox's ``refused/`` (the dead-letter list that ``cxr gateway status`` shows) with the last
error, for ops to resend. Each outcome is reported to the service, which shows it on the record.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import httpx
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from gateway.forwarder import PREDICTION_SUFFIX, Backoff
from gateway.metrics import DELIVERIES
from gateway.spool import Spool

log = logging.getLogger(__name__)
Reporter = Callable[[str, dict], None]  # (prediction id, delivery) -> the service


@dataclass(frozen=True)
class Destination:
    """A PACS AE that takes the SR by C-STORE."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """``AE@host:port``, as ``--send-to`` takes it."""
        try:
            ae_title, address = text.split("@", 1)
            host, port = address.rsplit(":", 1)
            return cls(ae_title, host, int(port))
        except ValueError:
            raise ValueError(f"--send-to wants AE@host:port, not {text!r}") from None

    @property
    def name(self) -> str:  # a folder name
        return f"{self.ae_title}@{self.host}_{self.port}"

    @property
    def label(self) -> str:  # as ops wrote it
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb service root that takes the SR by STOW-RS (``POST {root}/studies``)."""

    url: str

    @classmethod
    def parse(cls, text: str) -> "StowDestination":
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--stow-to wants an http(s) DICOMweb root URL, not {text!r}")
        return cls(text.rstrip("/"))

    @property
    def name(self) -> str:
        parts = urlsplit(self.url)
        path = parts.path.strip("/").replace("/", "_")
        return f"stow@{parts.netloc.replace(':', '_')}" + (f"_{path}" if path else "")

    @property
    def label(self) -> str:
        return self.url


def outboxes(root: Path, destinations: list, max_bytes: int) -> dict:
    return {d: Spool(root / "outbox" / d.name, max_bytes) for d in destinations}


class DimseStore:
    """C-STORE to one AE."""

    def __init__(self, calling_ae: str, destination: Destination):
        self.destination = destination
        self.ae = AE(ae_title=calling_ae)
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            self.ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.network_timeout = self.ae.acse_timeout = self.ae.dimse_timeout = 30

    def __call__(self, path: Path) -> str | None:
        d = self.destination
        assoc = self.ae.associate(d.host, d.port, ae_title=d.ae_title)
        if not assoc.is_established:
            return f"association with {d.ae_title} at {d.host}:{d.port} failed"
        try:
            status = assoc.send_c_store(pydicom.dcmread(path))
        finally:
            assoc.release()
        code = getattr(status, "Status", None)
        return None if code == 0x0000 else f"C-STORE status {code!r}"


BOUNDARY = "cxr-gateway-stow-boundary"


class StowStore:
    """STOW-RS (DICOM PS3.18 10.5) of one instance to a DICOMweb root."""

    def __init__(self, destination: StowDestination, headers: dict | None = None):
        self.url = f"{destination.url}/studies"
        self.http = httpx.Client(headers=headers or {}, timeout=60)

    def __call__(self, path: Path) -> str | None:
        # The file as stored: preamble and file meta included (a later WADO retrieve needs them).
        body = (
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes()
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        try:
            response = self.http.post(
                self.url, content=body, headers={"Content-Type": content_type, "Accept": "application/dicom+json"}
            )
        except httpx.HTTPError as exc:
            return f"STOW-RS to {self.url} failed: {exc.__class__.__name__}"
        if response.status_code != 200:
            return f"STOW-RS answered {response.status_code}"
        return None


class Sender:
    """Delivers one destination's outbox."""

    def __init__(self, destination, outbox: Spool, store, max_attempts: int = 20, reporter: Reporter | None = None):
        self.destination, self.outbox, self.store = destination, outbox, store
        self.max_attempts, self.reporter = max_attempts, reporter
        self.failures = 0

    def _attempts(self, path: Path) -> int:
        record = path.with_suffix(".attempts")
        return int(record.read_text()) if record.is_file() else 0

    def _report(self, path: Path, status: str, attempts: int, error: str | None = None) -> None:
        DELIVERIES.labels(self.destination.label, {"retrying": "failed"}.get(status, status)).inc()
        sidecar = path.with_suffix(PREDICTION_SUFFIX)
        if self.reporter is None or not sidecar.is_file():
            return
        delivery = {"destination": self.destination.label, "status": status, "attempts": attempts}
        delivery |= {"report_uid": path.stem} | ({"error": error[:500]} if error else {})
        self.reporter(sidecar.read_text().strip(), delivery)

    def _finish(self, path: Path) -> None:
        path.with_suffix(".attempts").unlink(missing_ok=True)
        path.with_suffix(PREDICTION_SUFFIX).unlink(missing_ok=True)

    def drain(self) -> int:
        sent = 0
        for path in self.outbox.waiting():
            error = self.store(path)
            attempts = self._attempts(path) + 1
            if error is None:
                self._report(path, "delivered", attempts)
                self._finish(path)
                self.outbox.answered(path)
                sent, self.failures = sent + 1, 0
                continue
            log.warning("delivery to %s failed (%d): %s", self.destination.label, attempts, error)
            if attempts >= self.max_attempts:
                self._report(path, "dead_letter", attempts, error)
                self._finish(path)
                self.outbox.refuse(path, {"destination": self.destination.label, "attempts": attempts, "error": error})
            else:
                self._report(path, "retrying", attempts, error)
                path.with_suffix(".attempts").write_text(str(attempts))
            self.failures += 1
            return sent  # the destination is down: the rest would fail too
        return sent


def parse_destinations(send_to: list[str], stow_to: list[str]) -> list:
    return [Destination.parse(t) for t in send_to] + [StowDestination.parse(t) for t in stow_to]


def make_sender(calling_ae: str, destination, outbox: Spool, reporter: Reporter | None = None, **options) -> Sender:
    """The sender for either kind of destination."""
    store = DimseStore(calling_ae, destination) if isinstance(destination, Destination) else StowStore(destination)
    return Sender(destination, outbox, store, reporter=reporter, **options)


def run_senders(senders: list[Sender], stopped: threading.Event, backoff: Backoff, idle_s: float = 0.5) -> None:
    while not stopped.is_set():
        for sender in senders:
            sender.drain()
        failing = [s.failures for s in senders if s.failures]
        stopped.wait(backoff.delay(max(failing)) if failing else idle_s)


def dead_letters(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) | {"file": p.stem} for p in sorted(root.glob("outbox/*/refused/*.json"))]
