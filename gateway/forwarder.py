"""``Forwarder``: submits spooled instances to the service, retrying with backoff while it is down.

Each instance goes to ``POST /api/v1/predictions`` as the DICOM file it was received as, saved, with
the request id ``dicom:<SOP Instance UID>``: a retry after a lost answer, or the same instance sent
again by the PACS, is the same request, stored once. The answer decides what happens to the file:

- 2xx and stored: the spooled copy is removed. 2xx but not stored (the service's database is
  down): retried like a failure, since the record is the point.
- 401/403 (the gateway's key is wrong or revoked), 408, 429 and 5xx, or no answer at all: the
  service is busy, down or misconfigured. The file stays and is tried
  again after an exponential backoff (``retry_initial_s`` doubling up to ``retry_max_s``); nothing
  is ever dropped for being late.
- 422 with the instance recorded as not analysed (a lateral, another body part, out of scope): the
  service has the file and the reason; the spooled copy is removed.
- any other 4xx: the service refused this instance (an unreadable or corrupt file, not CR/DX):
  retrying cannot change that, so it moves to ``refused/`` with the answer, where
  ``cxr gateway status`` shows it.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom

from gateway.metrics import FORWARDED
from gateway.spool import Spool

log = logging.getLogger(__name__)
# Besides 5xx: busy answers, and a rejected API key (a configuration error that ops fix: the
# instances wait for it rather than being filed as refused).
RETRYABLE = {401, 403, 408, 425, 429}
PREDICTION_SUFFIX = ".prediction"  # beside a queued report: the id of the record it reports on


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 1.0
    max_s: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** max(0, failures - 1))


def capture_bytes(source: Path, answer: dict, max_pixels: int = 100_000_000) -> tuple[str, bytes]:
    """The annotated Secondary Capture for one answered instance: (its SOP Instance UID, bytes)."""
    from cxr_model.secondary_capture import build_capture

    capture = build_capture(source.read_bytes(), answer, max_pixels)
    buffer = io.BytesIO()
    capture.save_as(buffer, enforce_file_format=True)
    return str(capture.SOPInstanceUID), buffer.getvalue()


def report_bytes(source: Path, answer: dict) -> tuple[str, bytes]:
    """The SR for one answered instance, encoded as a DICOM file: (its SOP Instance UID, bytes)."""
    from cxr_model.structured_report import build_report  # highdicom: only when results go back

    report = build_report(pydicom.dcmread(source), answer["probabilities"], answer["positives"], answer["model"])
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return str(report.SOPInstanceUID), buffer.getvalue()


class Forwarder:
    def __init__(
        self,
        spool: Spool,
        service_url: str,
        api_key: str | None,
        backoff: Backoff = Backoff(),
        outboxes: list[Spool] | None = None,
        secondary_capture: bool = False,
    ):
        self.spool, self.backoff, self.outboxes = spool, backoff, outboxes or []
        self.secondary_capture = secondary_capture
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=service_url.rstrip("/"), headers=headers, timeout=120)
        self.failures = 0
        self.stopped = threading.Event()

    def submit(self, path: Path) -> bool:
        """One instance to the service; True when it got a final answer (stored or refused)."""
        uid = path.stem
        try:
            response = self.http.post(
                "/api/v1/predictions",
                data={"request_id": f"dicom:{uid}", "save": "1"},
                files={"image": (path.name, path.read_bytes(), "application/dicom")},
            )
        except httpx.HTTPError as exc:
            log.warning("service unreachable for %s: %s", uid, exc)
            FORWARDED.labels("retry").inc()
            return False
        if response.status_code < 300 and not response.json().get("saved"):
            # Answered but not stored (the database is down): the record is what counts, so retry.
            log.warning("service could not store %s (%s); will retry", uid, response.json().get("save_error"))
            FORWARDED.labels("retry").inc()
            return False
        if response.status_code < 300:
            self.queue_results(path, response.json())
            self.spool.answered(path)
            FORWARDED.labels("stored").inc()
            return True
        if response.status_code >= 500 or response.status_code in RETRYABLE:
            log.warning("service answered %s for %s; will retry", response.status_code, uid)
            FORWARDED.labels("retry").inc()
            return False
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {"message": response.text[:500]}
        if error.get("saved"):
            # Not analysed (a lateral, another body part, out of scope) but recorded with its reason
            # and the file: answered. Kept in refused/ these would fill the spool (every PA has its lateral).
            log.info("%s recorded as not analysed: %s", uid, error.get("code"))
            self.spool.answered(path)
            FORWARDED.labels("not_analysed").inc()
            return True
        self.spool.refuse(path, {"status": response.status_code, **error})
        FORWARDED.labels("refused").inc()
        return True

    def queue_results(self, path: Path, answer: dict) -> None:
        """The result goes into every outbox before the source leaves the spool: a crash in between
        resubmits the instance (the same request, stored once) and rebuilds it. Beside each report
        goes the record's id, so that its senders can tell the service where it was delivered."""
        if not self.outboxes:
            return
        uid, data = report_bytes(path, answer)
        capture = capture_bytes(path, answer) if self.secondary_capture else None
        for outbox in self.outboxes:
            if capture is not None:  # before the SR: a viewer lists the picture first
                outbox.put(*capture)
            queued = outbox.put(uid, data)
            queued.with_suffix(PREDICTION_SUFFIX).write_text(answer["prediction_id"])

    def report_delivery(self, prediction_id: str, delivery: dict) -> None:
        """Tell the service where a record's SR went, for its pages; best effort (delivery never waits on it)."""
        try:
            self.http.post(f"/api/v1/predictions/{prediction_id}/deliveries", json=delivery, timeout=10)
        except httpx.HTTPError as exc:
            log.warning("delivery of %s not reported to the service: %s", prediction_id, exc)

    def drain(self) -> int:
        """Submit everything pending once, stopping at the first instance the service did not
        answer (the service is down: the rest would fail too); returns how many were answered."""
        answered = 0
        for path in self.spool.waiting():
            if self.stopped.is_set():
                break
            if not self.submit(path):
                self.failures += 1
                return answered
            answered, self.failures = answered + 1, 0
        return answered

    def run(self, idle_s: float = 0.5) -> None:
        """Until ``stop()``: drain, then wait (the backoff after a failure, else ``idle_s``)."""
        while not self.stopped.is_set():
            self.drain()
            self.stopped.wait(self.backoff.delay(self.failures) if self.failures else idle_s)

    def stop(self) -> None:
        self.stopped.set()
