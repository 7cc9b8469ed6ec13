"""Recent uploads held by the pages, by request id: bounded in count, bytes and age.

"Save to record" then stores exactly the prediction the clinician saw, and a plain form post that
failed validation does not make the clinician choose the file again. Each entry is charged what it
really holds in memory (a prediction keeps its decoded full-resolution image, many times its file's
size), expired entries are purged on every use and by a timer, and the total stays under its bound.
Per Ingress replica: with several replicas a follow-up post may land elsewhere, and the page then
asks for the file again instead of guessing.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from PIL import Image

BYTES_PER_PIXEL = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "RGB": 4,
    "RGBA": 4,
    "CMYK": 4,
    "YCbCr": 4,
    "I": 4,
    "F": 4,
}  # as Pillow lays them out in memory


def held_size(value, encoded: bytes) -> int:
    """Bytes an entry holds: its encoded file, plus the decoded image a prediction keeps."""
    image = getattr(getattr(value, "request", None), "original", None)
    decoded = image.width * image.height * BYTES_PER_PIXEL.get(image.mode, 4) if isinstance(image, Image.Image) else 0
    return len(encoded) + decoded


class HeldUploads:
    def __init__(self, max_items: int, max_bytes: int, ttl_s: float, purge_every_s: float = 60):
        self.max_items, self.max_bytes, self.ttl_s = max_items, max_bytes, ttl_s
        self.items: OrderedDict[str, tuple[float, int, object]] = OrderedDict()
        self.total = 0
        self.lock = threading.Lock()  # the purge timer runs on its own thread
        self._timer = threading.Thread(
            target=self._purge_forever, args=(purge_every_s,), daemon=True, name="held-uploads-purge"
        )
        self._timer.start()

    def _drop(self, key: str) -> None:
        _, size, _ = self.items.pop(key)
        self.total -= size

    def purge(self) -> None:
        now = time.monotonic()
        with self.lock:
            for key in [k for k, (expires, _, _) in self.items.items() if expires < now]:
                self._drop(key)

    def _purge_forever(self, every_s: float) -> None:
        while True:
            time.sleep(every_s)
            self.purge()

    def put(self, key: str, value, size: int) -> bool:
        """Hold ``value`` (``size`` bytes in memory); False when it alone is over the bound."""
        self.purge()
        with self.lock:
            if key in self.items:
                self._drop(key)
            if size > self.max_bytes:
                return False
            self.items[key] = (time.monotonic() + self.ttl_s, size, value)
            self.total += size
            while len(self.items) > self.max_items or self.total > self.max_bytes:
                self._drop(next(iter(self.items)))
            return True

    def get(self, key: str | None):
        self.purge()
        with self.lock:
            entry = self.items.get(key or "")
            return None if entry is None else entry[2]
