"""bench/open_loop.py: arrivals at a fixed rate, latency from the intended send time (no coordinated
omission), shedding counted apart from errors. Against a small loopback server whose stalls and
refusals are scripted, so what the load generator should report is known."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from http_load import Request, closed_loop  # noqa: E402
from open_loop import arrival_times, highest_rate_within, run_rates  # noqa: E402


class ScriptedServer:
    """HTTP/1.1 keep-alive on loopback. One global lock: a stall holds every request behind it, as
    a saturated server does. ``stall_at`` seconds after start, one request takes ``stall_s``;
    requests while ``shed`` is set get 503."""

    def __init__(self, stall_at: float | None = None, stall_s: float = 0.0, status: int = 200):
        self.stall_at, self.stall_s, self.status = stall_at, stall_s, status
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.lock = asyncio.Lock()
        self.started = time.monotonic()
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_until_complete(server.serve_forever())

    async def _serve(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                await reader.readexactly(length)
                async with self.lock:
                    if self.stall_at is not None and time.monotonic() - self.started >= self.stall_at:
                        self.stall_at = None
                        await asyncio.sleep(self.stall_s)
                    await asyncio.sleep(0.005)
                writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 2\r\n\r\n{{}}".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/predictions"


def requests_for(url: str) -> list[Request]:
    body = b"x" * 100
    head = f"POST /api/v1/predictions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    return [Request(head + body, 1)]


def test_arrivals_follow_the_offered_rate():
    times = arrival_times(50.0, 20.0, seed=1)
    assert 900 < len(times) < 1100 and times == sorted(times) and times[-1] < 20.0


def test_a_stall_shows_in_the_open_loop_but_hides_in_a_closed_loop():
    """1 s stall: a closed loop with one client records one slow answer; the open loop records every
    request that arrived during the stall as late, which is what users would have seen."""
    closed_server = ScriptedServer(stall_at=1.0, stall_s=1.0)
    closed = closed_loop(closed_server.url, requests_for(closed_server.url), 1, 3.0, warmup=0)
    open_server = ScriptedServer(stall_at=1.0, stall_s=1.0)
    (step,) = run_rates(open_server.url, requests_for(open_server.url), [20.0], 3.0, warmup=0.0)
    assert closed.percentile_ms(0.5) < 100 and sum(lat > 0.5 for lat in closed.latencies) == 1
    late = sum(lat > 0.5 for lat in step.latencies)
    assert late >= 5, late  # ~20 arrivals fell inside the stall
    assert step.percentile_ms(0.95) > 500 and step.errors == step.shed == step.not_sent == 0


def test_shedding_is_counted_apart_from_errors_and_rules_a_rate_out():
    shedding = ScriptedServer(status=503)
    (shed,) = run_rates(shedding.url, requests_for(shedding.url), [10.0], 2.0, warmup=0.0)
    broken = ScriptedServer(status=500)
    (failed,) = run_rates(broken.url, requests_for(broken.url), [10.0], 2.0, warmup=0.0)
    healthy = ScriptedServer()
    (ok,) = run_rates(healthy.url, requests_for(healthy.url), [10.0], 2.0, warmup=0.0)
    assert shed.shed > 10 and shed.errors == 0 and shed.ok == 0
    assert failed.errors > 10 and failed.shed == 0
    assert ok.ok > 10 and highest_rate_within([ok, shed, failed], p99_target_ms=1000) == 10.0
    assert highest_rate_within([ok], p99_target_ms=0.001) is None


@pytest.mark.parametrize("in_flight", [2])
def test_requests_beyond_max_in_flight_are_counted_not_sent(in_flight):
    stalled = ScriptedServer(stall_at=0.0, stall_s=2.5)
    (step,) = run_rates(stalled.url, requests_for(stalled.url), [20.0], 2.0, warmup=0.0, max_in_flight=in_flight)
    assert step.not_sent > 20 and step.summary()["error_rate"] > 0.5
