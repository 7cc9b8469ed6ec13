"""``Periodic``: a daemon thread that runs one job now and then every ``interval_s`` until stopped.

A job that fails (the database is down) is logged and tried again at the next tick; it never
ends the thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

logger = logging.getLogger("ray.serve")


class Periodic(threading.Thread):
    def __init__(self, interval_s: float, job: Callable[[], object]):
        super().__init__(name=f"periodic-{getattr(job, '__name__', 'job')}", daemon=True)
        self.interval_s, self.job = interval_s, job
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.job()
            except Exception as exc:  # noqa: BLE001 - the next tick tries again
                logger.warning("%s failed: %s: %s", self.name, exc.__class__.__name__, exc)
            self.stopped.wait(self.interval_s)

    def stop(self) -> None:
        self.stopped.set()
