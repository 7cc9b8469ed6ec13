"""HeldUploads, without Ray: charged what it holds, purged by its timer, bounded in total."""

from __future__ import annotations

import time
from types import SimpleNamespace

from PIL import Image

from serve.held_uploads import HeldUploads, held_size


def prediction_holding(side: int, mode: str = "I;16"):
    """What the pages hold for "Save to record": a prediction whose request keeps the decoded image."""
    return SimpleNamespace(request=SimpleNamespace(original=Image.new(mode, (side, side))))


def test_an_entry_is_charged_its_decoded_image_not_its_file_size():
    held = prediction_holding(4000)  # a 2 MB JPEG can decode to this: 32 MB of 16-bit pixels
    assert held_size(held, b"x" * 2_000_000) == 2_000_000 + 4000 * 4000 * 2
    assert held_size(None, b"x" * 10) == 10  # a plain post's file, held as bytes only


def test_the_total_stays_under_the_bound_by_evicting_the_oldest():
    uploads = HeldUploads(max_items=100, max_bytes=50 * 2**20, ttl_s=900)
    for i in range(5):
        assert uploads.put(f"r{i}", prediction_holding(2000), held_size(prediction_holding(2000), b""))  # 8 MB each
    uploads.put("big", prediction_holding(4000), held_size(prediction_holding(4000), b""))  # 32 MB
    assert uploads.total <= 50 * 2**20 and uploads.get("big") is not None and uploads.get("r0") is None
    assert not uploads.put("huge", prediction_holding(6000), 6000 * 6000 * 2)  # alone over the bound: not held


def test_expired_entries_are_purged_by_the_timer_without_being_read():
    uploads = HeldUploads(max_items=10, max_bytes=2**30, ttl_s=0.2, purge_every_s=0.1)
    uploads.put("r1", b"data", 4)
    deadline = time.monotonic() + 5
    while uploads.items and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not uploads.items and uploads.total == 0
