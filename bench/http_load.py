"""A lean closed-loop HTTP load client for the benchmarks (loopback only, bounded in time).

The load generator shares the cores with the server under test: httpx spent ~6 ms of CPU per
upload, this spends well under 1 ms (requests are built once and replayed on keep-alive
connections), so the measurement is of the server, not the client.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import urllib.parse
from dataclasses import dataclass, field

BOUNDARY = "cxrbench7d1f0c"


def multipart_body(fields: dict, images: list[bytes]) -> tuple[bytes, str]:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    for i, image in enumerate(images):
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="cxr{i}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + image
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def raw_request(url: str, body: bytes, content_type: str, headers: dict | None = None) -> bytes:
    parsed = urllib.parse.urlsplit(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\n{extra}"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True)
class Request:
    raw: bytes
    images: int  # images the request carries: a batch request counts all of them


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port
        self.reader = self.writer = None

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                body += (await self.reader.readexactly(size + 2))[:-2]
                if size == 0:
                    break
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


@dataclass
class LoadResult:
    seconds: float
    images: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    item_failures: int = 0  # batch requests: items answered with an error inside a 200

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies) or [float("nan")]
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200) + self.item_failures

    def row(self, label: str) -> str:
        p50 = statistics.median(self.latencies) * 1000 if self.latencies else float("nan")
        return (
            f"  {label:34s} {self.rate:6.2f} img/s  p50 {p50:7.0f} ms  p99 {self.percentile_ms(0.99):7.0f} ms  "
            f"errors {self.errors}"
        )


def _count_item_failures(body: bytes) -> int:
    try:
        items = json.loads(body).get("items")
    except (ValueError, AttributeError):
        return 0
    return sum(1 for item in items or [] if item.get("status") != 200)


async def _closed_loop(url: str, requests: list[Request], concurrency: int, seconds: float) -> LoadResult:
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    result = LoadResult(seconds)

    async def client(worker: int):
        connection, i = Connection(url), worker
        while time.perf_counter() < deadline:
            request = requests[i % len(requests)]
            sent = time.perf_counter()
            status, body = await asyncio.wait_for(connection.send(request.raw), timeout=120)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.latencies.append(time.perf_counter() - sent)
                failed = _count_item_failures(body) if request.images > 1 else 0
                result.item_failures += failed
                result.images += request.images - failed
            i += concurrency
        await connection.close()

    await asyncio.gather(*(client(w) for w in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def closed_loop(url: str, requests: list[Request], concurrency: int, seconds: float, warmup: float = 3.0) -> LoadResult:
    """Warm up (unmeasured), then ``concurrency`` clients each send back to back for ``seconds``."""
    if warmup > 0:
        asyncio.run(_closed_loop(url, requests, concurrency, warmup))
    return asyncio.run(_closed_loop(url, requests, concurrency, seconds))


def single_image_requests(url: str, images: list[bytes], fields: dict, headers: dict | None = None) -> list[Request]:
    return [Request(raw_request(url, *multipart_body(fields, [image]), headers), 1) for image in images]
