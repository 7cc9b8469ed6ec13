"""``ArchiveScorer``: the Ray Data actor that scores one batch of archived files.

Each actor loads the checkpoint once (``cxr_model.engine``, the service's own
engine: same runtime choice, preprocessing, out-of-scope gates and
calibration), then per batch reads each file, decodes it as an upload is
decoded (PNG, JPEG or DICOM, with the same header checks and pixel budget),
runs the image checks and one forward pass, and returns one row per file.
A file that cannot be read or decoded becomes a row with its error; it never
fails the batch.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from cxr_model.classifier import low_confidence, positive_labels
from cxr_model.engine import load_engine
from cxr_model.formats import ImageDecodeError
from cxr_model.preprocessing import open_export, resize_levels
from cxr_model.scope import check_image

SCORED, OUT_OF_SCOPE, ERROR = "scored", "out_of_scope", "error"


def probability_column(label: str) -> str:
    return f"p_{label}"


class ArchiveScorer:
    def __init__(self, checkpoint: str, device: str, runtime: str, precision: str, threads: int, saver=None):
        torch.set_num_threads(threads)
        self.engine = load_engine(checkpoint, device, runtime, precision, threads)
        self.spec = self.engine.card.preprocess_spec
        self.saver = saver() if saver else None  # built here: a pymongo client per actor, never pickled

    def _read(self, path: str) -> tuple[dict, bytes | None, np.ndarray | None]:
        row = {"path": path, "sha256": "", "status": ERROR, "reason": "", "message": ""}
        try:
            data = Path(path).read_bytes()
            row["sha256"] = hashlib.sha256(data).hexdigest()
            image = open_export(data, self.spec.max_pixels)
        except ImageDecodeError as exc:
            return row | {"reason": exc.reason, "message": str(exc)}, None, None
        except OSError as exc:
            return row | {"reason": "unreadable", "message": f"{type(exc).__name__}: {exc.strerror or exc}"}, None, None
        levels = resize_levels(image, self.spec.input_size)[None]
        verdict = check_image(image, levels, self.engine.limits)
        if not verdict.in_scope:  # refused before the model runs, as the service does
            return row | {"status": OUT_OF_SCOPE, "reason": verdict.reason, "message": verdict.message}, None, None
        return row, data, levels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        card, labels = self.engine.card, self.engine.card.labels
        read = [self._read(str(path)) for path in batch["path"]]
        patients = [str(p) for p in batch.get("patient_id", [""] * len(read))]
        rows = [row for row, _, _ in read]
        good = [i for i, (_, _, levels) in enumerate(read) if levels is not None]
        for row in rows:
            row.update({probability_column(label): None for label in labels})
            row.update(top_label=None, confidence=None, positives=[], low_confidence=None, saved=None, save_reason="")
        if good:
            probs, verdicts, _ = self.engine.forward([read[i][2] for i in good])
            for i, p, called, verdict in zip(good, probs, positive_labels(probs, card), verdicts):
                if verdict is not None and not verdict.in_scope:
                    rows[i].update(status=OUT_OF_SCOPE, reason=verdict.reason, message=verdict.message)
                    continue
                top = int(np.argmax(p))
                rows[i].update({probability_column(label): float(v) for label, v in zip(labels, p)})
                rows[i].update(
                    status=SCORED,
                    top_label=labels[top],
                    confidence=float(p[top]),
                    positives=list(called),
                    low_confidence=bool(low_confidence(p, card)),
                )
                if self.saver is not None:
                    rows[i]["saved"], rows[i]["save_reason"] = self.saver.save(
                        rows[i], read[i][1], self.engine, patients[i]
                    )
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for row in rows:
            row.update(
                model_version=card.version,
                weights_sha256=card.weights_sha256,
                runtime=self.engine.runtime,
                precision=self.engine.precision,
                scored_at=stamp,
            )
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
