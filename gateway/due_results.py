"""``DueResults``: delivers the results of instances the service received by STOW-RS.

An instance stored through the service's STOW-RS endpoint never passed through a gateway, so no
gateway holds it to send its results back. The service marks such a record as owing them; a gateway
with destinations polls ``POST /api/v1/deliveries:claim`` (its key's role is ``gateway``), fetches
each claimed record's instance, builds the SR (and the Secondary Capture) exactly as for an
instance it received itself, puts them into every outbox and reports them ``queued``, which ends
the service's debt. From there its senders deliver, retry and report as for any other result.

A claim is a lease: the records of a gateway that dies between claim and report are claimed again
when the lease runs out. Rebuilt, they are the same DICOM objects (their UIDs are fixed by the
source instance and the model), so a PACS that gets one twice keeps it once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import httpx

from gateway.forwarder import Backoff, Forwarder

log = logging.getLogger(__name__)


class DueResults:
    def __init__(self, forwarder: Forwarder, staging: Path, destinations: list[str], batch: int = 8):
        self.forwarder, self.destinations, self.batch = forwarder, destinations, batch
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.failures = 0
        self.refused = False  # the service will not hand this gateway results: stop asking

    def poll(self) -> int:
        """Claim once and queue what was claimed; returns how many records were queued."""
        http = self.forwarder.http
        try:
            response = http.post("/api/v1/deliveries:claim", json={"limit": self.batch})
        except httpx.HTTPError as exc:
            log.warning("service unreachable for claiming STOW-RS results: %s", exc)
            self.failures += 1
            return 0
        if response.status_code in (403, 404):
            # Asking again cannot help (and each 403 is an audit entry): a configuration to fix.
            log.error(
                "the service answered %s to claiming STOW-RS results: their SRs will not be sent by this "
                "gateway. Give its key the role 'gateway', or start it with --no-claim-stow-results.",
                response.status_code,
            )
            self.refused = True
            return 0
        if response.status_code != 200:
            log.warning("claiming STOW-RS results: the service answered %s", response.status_code)
            self.failures += 1
            return 0
        self.failures = 0
        return sum(self._queue(item) for item in response.json()["items"])

    def _queue(self, record: dict) -> bool:
        prediction_id = record["prediction_id"]
        try:
            response = self.forwarder.http.get(f"/api/v1/deliveries/{prediction_id}/instance")
        except httpx.HTTPError as exc:
            log.warning("instance of %s not fetched (claimed again after the lease): %s", prediction_id, exc)
            return False
        if response.status_code != 200:
            log.warning("instance of %s: the service answered %s", prediction_id, response.status_code)
            return False
        source = self.staging / f"{prediction_id}.dcm"
        source.write_bytes(response.content)
        try:
            self.forwarder.queue_results(source, record)
        except Exception as exc:  # an instance the SR cannot be built from: say so on the record, once
            log.exception("results of %s could not be built", prediction_id)
            self._report(prediction_id, "dead_letter", f"results not built: {exc.__class__.__name__}: {exc}")
            return False
        finally:
            source.unlink(missing_ok=True)
        self._report(prediction_id, "queued")
        return True

    def _report(self, prediction_id: str, status: str, error: str | None = None) -> None:
        for destination in self.destinations:
            delivery = {"destination": destination, "status": status, "attempts": 0}
            self.forwarder.report_delivery(prediction_id, delivery | ({"error": error[:500]} if error else {}))

    def run(self, stopped: threading.Event, backoff: Backoff, interval_s: float) -> None:
        """Until ``stopped`` (or the service refuses): poll, then wait the interval or the backoff."""
        while not stopped.is_set() and not self.refused:
            queued = self.poll()
            if queued:  # more may be waiting: claim again straight away
                continue
            stopped.wait(backoff.delay(self.failures) if self.failures else interval_s)
