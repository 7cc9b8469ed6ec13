"""Open-loop load: requests arrive at a fixed rate whatever the service does (like perf_analyzer's
request-rate mode), and each latency is measured from the request's *intended* send time.

A closed loop (N clients, each waiting for its answer before sending again) slows down with the
service and so never sees the queue a real arrival stream builds: coordinated omission. Here a
Poisson arrival schedule is fixed up front; a request that cannot even be sent because
``max_in_flight`` are outstanding is counted as not sent, and the service's deliberate shedding
(503/504 with Retry-After) is counted apart from errors.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from http_load import Connection, Request

SHED = (503, 504)


@dataclass
class StepResult:
    rate: float  # offered requests per second
    seconds: float
    latencies: list[float] = field(default_factory=list)  # OK answers, from the intended send time
    ok: int = 0
    shed: int = 0  # 503/504: refused on purpose, with Retry-After
    errors: int = 0  # any other status, a broken connection, or no answer within the drain time
    not_sent: int = 0  # max_in_flight requests already outstanding: the service fell far behind

    def percentile_ms(self, q: float) -> float | None:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else None

    def summary(self) -> dict:
        sent = self.ok + self.shed + self.errors
        return {
            "offered_per_s": self.rate,
            "achieved_per_s": self.ok / self.seconds,
            "ok": self.ok,
            "shed_503_504": self.shed,
            "errors": self.errors,
            "not_sent": self.not_sent,
            "shed_rate": self.shed / sent if sent else 0.0,
            "error_rate": (self.errors + self.not_sent) / (sent + self.not_sent) if sent + self.not_sent else 0.0,
            **{f"p{int(q * 100)}_ms": self.percentile_ms(q) for q in (0.5, 0.95, 0.99)},
        }


def arrival_times(rate: float, seconds: float, seed: int) -> list[float]:
    """Poisson arrivals: exponential gaps with mean 1/rate, as independent clients produce."""
    rng, t, times = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return times
        times.append(t)


async def _step(
    url: str, requests: list[Request], rate: float, seconds: float, warmup: float, max_in_flight: int, seed: int
) -> StepResult:
    result = StepResult(rate, seconds)
    idle: list[Connection] = []
    pending: set[asyncio.Task] = set()
    start = time.perf_counter()

    async def send(i: int, intended: float, measured: bool) -> None:
        connection = idle.pop() if idle else Connection(url)
        try:
            status, _ = await connection.send(requests[i % len(requests)].raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            await connection.close()
            result.errors += measured
            return
        idle.append(connection)
        if not measured:
            return
        if status == 200:
            result.ok += 1
            result.latencies.append(time.perf_counter() - intended)
        elif status in SHED:
            result.shed += 1
        else:
            result.errors += 1

    for i, offset in enumerate(arrival_times(rate, warmup + seconds, seed)):
        intended = start + offset
        await asyncio.sleep(max(0.0, intended - time.perf_counter()))
        measured = offset >= warmup
        if len(pending) >= max_in_flight:
            result.not_sent += measured
            continue
        task = asyncio.create_task(send(i, intended, measured))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:  # answers still owed: wait a bounded time, then count the rest as errors
        _, late = await asyncio.wait(pending, timeout=max(30.0, seconds))
        for task in late:
            task.cancel()
        result.errors += len(late)
    for connection in idle:
        await connection.close()
    return result


def run_rates(
    url: str,
    requests: list[Request],
    rates: list[float],
    seconds: float,
    warmup: float = 5.0,
    max_in_flight: int = 256,
    seed: int = 0,
) -> list[StepResult]:
    steps = []
    for rate in rates:
        step = asyncio.run(_step(url, requests, rate, seconds, warmup, max_in_flight, seed))
        s = step.summary()
        p99 = "n/a" if s["p99_ms"] is None else f"{s['p99_ms']:.0f}"
        print(
            f"{rate:7.2f} req/s offered: {s['achieved_per_s']:6.2f} OK/s  p50 {s['p50_ms'] or 0:7.0f} ms  "
            f"p99 {p99:>7} ms  shed {s['shed_503_504']}  errors {s['errors']}  not sent {s['not_sent']}",
            flush=True,
        )
        steps.append(step)
    return steps


def highest_rate_within(steps: list[StepResult], p99_target_ms: float) -> float | None:
    """The highest offered rate served entirely (no shedding, no errors) with p99 under the target."""
    good = [
        s.rate
        for s in steps
        if s.ok and not (s.shed or s.errors or s.not_sent) and (s.percentile_ms(0.99) or 0) <= p99_target_ms
    ]
    return max(good) if good else None
