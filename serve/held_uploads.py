"""Recent uploads held by the pages, by request id: bounded in count, bytes and age.

"Save to record" then stores exactly the prediction the clinician saw, and a plain form post that
failed validation does not make the clinician choose the file again. Per Ingress replica: with
several replicas a follow-up post may land elsewhere, and the page then asks for the file again
instead of guessing.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class HeldUploads:
    def __init__(self, max_items: int, max_bytes: int, ttl_s: float):
        self.max_items, self.max_bytes, self.ttl_s = max_items, max_bytes, ttl_s
        self.items: OrderedDict[str, tuple[float, int, object]] = OrderedDict()

    def put(self, key: str, value, size: int) -> None:
        self.items.pop(key, None)
        self.items[key] = (time.monotonic() + self.ttl_s, size, value)
        while len(self.items) > self.max_items or sum(s for _, s, _ in self.items.values()) > self.max_bytes:
            self.items.popitem(last=False)

    def get(self, key: str | None):
        entry = self.items.get(key or "")
        if entry is None or entry[0] < time.monotonic():
            self.items.pop(key or "", None)
            return None
        return entry[2]
