"""``cxr export-reviewed --since DATE OUT/``: reviewed studies as a data set ``cxr train`` reads.

Closing the loop from this hospital's practice back to fine-tuning: each record with a current
radiologist review (reviewed on or after ``--since``) is written with the radiologist's findings as
its labels, never the model's. A softmax model's reviews become class folders (``imagefolder``:
``OUT/<label>/<record id>.png``); if any exported review is of a multi-label model, the export is a
``labels.csv`` (``image`` plus one 0/1 column per label) beside ``images/``. Every image is a PNG
of the original as the pages show it (DICOM decoded and windowed), named by record id: no patient
identifier leaves in a file name, a header or the sheet. ``manifest.json`` lists what was written
and from which reviews; the export is one audit entry (``export``).

Straight to MongoDB like ``cxr keys``: ``CXR_MONGODB_URI`` (default: the embedded server on
127.0.0.1:``CXR_EMBEDDED_DB_PORT``), ``CXR_MONGODB_DATABASE``.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path

import gridfs

from serve.audit import AuditLog
from serve.identity import Identity
from serve.records import IMAGES, PREDICTIONS
from serve.reviews import Reviews


@dataclass(frozen=True)
class ExportSummary:
    layout: str  # imagefolder | csv
    written: int
    skipped: list[dict]  # records whose original could not be read, with why


def register_export_reviewed(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-reviewed", help="reviewed studies, labelled by their radiologists, as a data set cxr train reads"
    )
    parser.add_argument("out", type=Path, help="folder to write (created; must be empty if it exists)")
    parser.add_argument(
        "--since", type=date.fromisoformat, default=None, help="only reviews from this day, YYYY-MM-DD (default: all)"
    )
    parser.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from serve.cli import _database
    from serve.settings import ServeSettings

    settings = ServeSettings()
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} is not empty: choose a new folder")
        return 1
    since = datetime.combine(args.since, time(), timezone.utc) if args.since else None
    summary = export_reviewed(_database(settings), args.out, since, settings.max_pixels)
    print(f"wrote {summary.written} reviewed images to {args.out} ({summary.layout} layout)")
    for skipped in summary.skipped:
        print(f"skipped {skipped['prediction_id']}: {skipped['reason']}")
    return 0


def export_reviewed(db, out: Path, since: datetime | None, max_pixels: int) -> ExportSummary:
    from serve.images import browser_png  # here, not at the top: every `cxr` command imports this module

    reviews = Reviews(db).current(since)
    records = {r["_id"]: r for r in db[PREDICTIONS].find({"_id": {"$in": [r["prediction_id"] for r in reviews]}})}
    multilabel = any(
        (records.get(r["prediction_id"]) or {}).get("model", {}).get("task") == "multilabel" for r in reviews
    )
    files = gridfs.GridFS(db, collection=IMAGES)
    labels: list[str] = []
    for review in reviews:
        labels += [label for label in review["labels"] if label not in labels]
    rows, written, skipped = [], [], []
    for review in reviews:
        record = records.get(review["prediction_id"])
        try:
            png = browser_png(files.get(record["files"]["original"]).read(), max_pixels)
        except Exception as exc:  # a lost file, an original that no longer decodes: listed, not fatal
            skipped.append({"prediction_id": review["prediction_id"], "reason": f"{exc.__class__.__name__}: {exc}"})
            continue
        name = f"{review['prediction_id']}.png"
        if multilabel:
            path = out / "images" / name
            rows.append([f"images/{name}"] + [int(label in review["findings"]) for label in labels])
        else:
            (finding,) = review["findings"]
            path = out / finding / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        written.append(
            {"image": str(path.relative_to(out)), "review_id": review["_id"], "model_version": review["model_version"]}
        )
    out.mkdir(parents=True, exist_ok=True)
    if multilabel:
        with open(out / "labels.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([["image", *labels], *rows])
    manifest = {
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "since": since.isoformat() if since else None,
        "layout": "csv" if multilabel else "imagefolder",
        "labels": labels,
        "images": written,
        "skipped": skipped,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    actor = Identity(f"cli:{getpass.getuser()}", None, "admin")
    AuditLog(db).record(actor, "export", detail=f"export-reviewed: {len(written)} images to {out}")
    return ExportSummary(manifest["layout"], len(written), skipped)
