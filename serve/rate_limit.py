"""Per-identity rate limiting: a token bucket per API key or user, with bounded memory."""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    """A token bucket per identity: ``per_minute`` requests, refilled continuously, bounded memory."""

    def __init__(self, per_minute: int, max_identities: int = 10_000):
        self.per_minute, self.max_identities = per_minute, max_identities
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, who: str, per_minute: int | None = None, cost: float = 1.0) -> float:
        """0 when allowed; otherwise the seconds until the next request would be. ``cost``: requests
        this one counts as (a batch's images), capped at a minute's worth so it can ever pass."""
        rate = float(per_minute or self.per_minute)
        cost = min(cost, rate)
        now = time.monotonic()
        tokens, stamp = self.buckets.pop(who, (rate, now))
        tokens = min(rate, tokens + (now - stamp) * rate / 60.0)
        if tokens >= cost:
            self.buckets[who] = (tokens - cost, now)
            wait = 0.0
        else:
            self.buckets[who] = (tokens, now)
            wait = (cost - tokens) * 60.0 / rate
        while len(self.buckets) > self.max_identities:
            self.buckets.popitem(last=False)
        return wait
