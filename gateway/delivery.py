"""``Delivery``: sends result objects (the SR) back to the PACS by C-STORE, one outbox per destination.

The forwarder writes each result into every destination's outbox (a ``Spool``: on disk before the
source instance leaves the spool, so a crash loses neither). A sender per destination stores them
with C-STORE and removes each once the PACS answers success. Failures are retried with backoff;
after ``max_attempts`` the object moves to that outbox's ``refused/`` (the dead-letter list that
``cxr gateway status`` shows) with the last error, for ops to resend.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ComprehensiveSRStorage

from gateway.forwarder import Backoff
from gateway.spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
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
    def name(self) -> str:
        return f"{self.ae_title}@{self.host}_{self.port}"


def outboxes(root: Path, destinations: list[Destination], max_bytes: int) -> dict[Destination, Spool]:
    return {d: Spool(root / "outbox" / d.name, max_bytes) for d in destinations}


class Sender:
    """Delivers one destination's outbox."""

    def __init__(self, calling_ae: str, destination: Destination, outbox: Spool, max_attempts: int = 20):
        self.destination, self.outbox, self.max_attempts = destination, outbox, max_attempts
        self.ae = AE(ae_title=calling_ae)
        self.ae.add_requested_context(ComprehensiveSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.network_timeout = self.ae.acse_timeout = self.ae.dimse_timeout = 30
        self.failures = 0

    def _attempts(self, path: Path) -> int:
        record = path.with_suffix(".attempts")
        return int(record.read_text()) if record.is_file() else 0

    def store(self, path: Path) -> str | None:
        """C-STORE one object; None on success, else the error."""
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

    def drain(self) -> int:
        sent = 0
        for path in self.outbox.waiting():
            error = self.store(path)
            if error is None:
                path.with_suffix(".attempts").unlink(missing_ok=True)
                self.outbox.answered(path)
                sent, self.failures = sent + 1, 0
                continue
            attempts = self._attempts(path) + 1
            log.warning("delivery to %s failed (%d): %s", self.destination.name, attempts, error)
            if attempts >= self.max_attempts:
                path.with_suffix(".attempts").unlink(missing_ok=True)
                self.outbox.refuse(path, {"destination": self.destination.name, "attempts": attempts, "error": error})
            else:
                path.with_suffix(".attempts").write_text(str(attempts))
            self.failures += 1
            return sent  # the destination is down: the rest would fail too
        return sent


def run_senders(senders: list[Sender], stopped: threading.Event, backoff: Backoff, idle_s: float = 0.5) -> None:
    while not stopped.is_set():
        for sender in senders:
            sender.drain()
        failing = [s.failures for s in senders if s.failures]
        stopped.wait(backoff.delay(max(failing)) if failing else idle_s)


def dead_letters(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) | {"file": p.stem} for p in sorted(root.glob("outbox/*/refused/*.json"))]
