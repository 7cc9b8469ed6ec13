"""``Spool``: where the gateway keeps every received instance until the service has answered it.

An instance is written whole under ``incoming/``, flushed to disk (``fsync``), renamed into
``pending/`` and the directory entry flushed too: only then is the C-STORE answered success, so a
crash, a restart or a power cut after the answer loses nothing. The forwarder takes instances from
``pending/``; those the service answered are removed, those it refused for good (a 4xx that a retry
cannot change) move to ``refused/`` with the answer beside them, for ops to see. The same SOP
Instance UID sent again replaces its pending copy: one instance, one file.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # DICOM UIDs: digits and dots, at most 64 characters


class SpoolFull(OSError):
    """Storing this instance would take the spool past its size limit."""


@dataclass(frozen=True)
class SpoolStatus:
    pending: int
    refused: int
    bytes_used: int
    max_bytes: int
    refusals: list[dict]


def _fsync_dir(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class Spool:
    def __init__(self, root: str | Path, max_bytes: int):
        self.root, self.max_bytes = Path(root), max_bytes
        self.incoming, self.pending, self.refused = (self.root / d for d in ("incoming", "pending", "refused"))
        for directory in (self.incoming, self.pending, self.refused):
            directory.mkdir(parents=True, exist_ok=True)

    def bytes_used(self) -> int:
        return sum(p.stat().st_size for d in (self.incoming, self.pending, self.refused) for p in d.iterdir())

    def put(self, sop_instance_uid: str, data: bytes) -> Path:
        """Durably store one instance; ``SpoolFull`` when it does not fit, ``ValueError`` for a bad UID."""
        if not (UID.fullmatch(sop_instance_uid) and len(sop_instance_uid) <= 64):
            raise ValueError(f"not a DICOM UID: {sop_instance_uid!r}")
        if self.bytes_used() + len(data) > self.max_bytes:
            raise SpoolFull(f"the spool holds {self.bytes_used()} of {self.max_bytes} bytes")
        staging = self.incoming / f"{sop_instance_uid}.{uuid.uuid4().hex}.part"
        with open(staging, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        final = self.pending / f"{sop_instance_uid}.dcm"
        os.replace(staging, final)
        _fsync_dir(self.pending)
        return final

    def waiting(self) -> list[Path]:
        """Pending instances, oldest first (the order they were received)."""
        return sorted(self.pending.glob("*.dcm"), key=lambda p: p.stat().st_mtime_ns)

    def answered(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def refuse(self, path: Path, answer: dict) -> None:
        """The service refused this instance for good: keep it, with the answer, where ops look."""
        target = self.refused / path.name
        (self.refused / (path.stem + ".json")).write_text(json.dumps(answer, indent=2))
        os.replace(path, target)

    def status(self) -> SpoolStatus:
        refusals = [json.loads(p.read_text()) | {"file": p.stem} for p in sorted(self.refused.glob("*.json"))]
        pending = len(list(self.pending.glob("*.dcm")))
        return SpoolStatus(pending, len(refusals), self.bytes_used(), self.max_bytes, refusals)
