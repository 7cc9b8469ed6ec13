"""The gateway's Prometheus metrics, served by ``cxr gateway --metrics-port`` for ops' dashboards.

Counters are counted where things happen (the SCP, the forwarder, the senders); the spool's and
outboxes' sizes and dead letters are read from disk at each scrape, so they are right after a
restart too.
"""

from __future__ import annotations

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.spool import Spool

RECEIVED = Counter(
    "cxr_gateway_received",
    "C-STOREs answered, by outcome (stored, out_of_resources, refused)",
    ["outcome"],
)
FORWARDED = Counter(
    "cxr_gateway_forwarded",
    "Instances submitted to the service, by outcome (stored, not_analysed: recorded with the reason, "
    "refused: filed for ops, retry: tried again later)",
    ["outcome"],
)
DELIVERIES = Counter(
    "cxr_gateway_deliveries",
    "Structured report deliveries, by destination and outcome (delivered, failed, dead_letter)",
    ["destination", "outcome"],
)


class SpoolCollector(Collector):
    """Spool and outbox sizes, read from disk when scraped."""

    def __init__(self, spool: Spool, outboxes: dict[str, Spool]):
        self.spool, self.outboxes = spool, outboxes

    def collect(self):
        status = self.spool.status()
        yield GaugeMetricFamily("cxr_gateway_spool_pending", "Instances waiting for the service", status.pending)
        yield GaugeMetricFamily(
            "cxr_gateway_spool_refused", "Instances the service refused, kept for ops", status.refused
        )
        yield GaugeMetricFamily("cxr_gateway_spool_bytes", "Bytes in the spool", status.bytes_used)
        yield GaugeMetricFamily("cxr_gateway_spool_max_bytes", "Above this, C-STOREs are refused", status.max_bytes)
        pending = GaugeMetricFamily(
            "cxr_gateway_outbox_pending", "Reports waiting for delivery", labels=["destination"]
        )
        dead = GaugeMetricFamily(
            "cxr_gateway_dead_letters", "Reports given up on, kept for ops", labels=["destination"]
        )
        for name, outbox in self.outboxes.items():
            outbox_status = outbox.status()
            pending.add_metric([name], outbox_status.pending)
            dead.add_metric([name], outbox_status.refused)
        yield pending
        yield dead
