"""What an archive scoring run reads, where it writes, and what it has already done.

Inputs: a folder (every PNG, JPEG and DICOM file under it, DICOM with or
without a suffix) or a manifest CSV with a ``path`` column (relative paths
are relative to the CSV) and an optional ``patient_id`` column.

Output: ``results.parquet/``, a Parquet dataset folder as Spark and Ray Data
write them (pandas, pyarrow and DuckDB read it as one table): it
names the model, and each ``part-*.parquet`` is written whole and renamed
into place, so an interrupted run leaves only complete parts. A rerun skips
every path already in a part: nothing finished is scored twice.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic"}
RUN_FILE = "_run.json"  # "_" and "." files are not data to pyarrow, pandas or Spark


class ScoringError(ValueError):
    """The inputs or the output folder cannot be used as given."""


def _candidates(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            suffix = Path(name).suffix.lower()
            # DICOM files often have no suffix at all (PACS exports name them by UID).
            if not name.startswith(".") and (suffix in IMAGE_SUFFIXES or not suffix or suffix[1:].isdigit()):
                found.append(Path(folder) / name)
    return found


def list_inputs(source: str | Path) -> list[dict]:
    """[{"path": absolute path, "patient_id": str or ""}] in a stable order."""
    source = Path(source)
    if source.is_dir():
        return [{"path": str(p.resolve()), "patient_id": ""} for p in _candidates(source)]
    if source.is_file() and source.suffix.lower() == ".csv":
        with source.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if "path" not in (reader.fieldnames or []):
                raise ScoringError(f"{source} has no 'path' column (columns: {reader.fieldnames})")
            rows = list(reader)
        return [
            {"path": str((source.parent / row["path"]).resolve()), "patient_id": (row.get("patient_id") or "").strip()}
            for row in rows
            if row["path"].strip()
        ]
    raise ScoringError(f"--input must be a folder or a manifest .csv, not {source}")


def results_schema(labels: list[str]) -> pa.Schema:
    text = ("path", "sha256", "status", "reason", "message")
    model = ("model_version", "weights_sha256", "runtime", "precision", "scored_at")
    return pa.schema(
        [pa.field(name, pa.string()) for name in text]
        + [pa.field(f"p_{label}", pa.float64()) for label in labels]
        + [
            pa.field("top_label", pa.string()),
            pa.field("confidence", pa.float64()),
            pa.field("positives", pa.list_(pa.string())),
            pa.field("low_confidence", pa.bool_()),
            pa.field("saved", pa.bool_()),
            pa.field("save_reason", pa.string()),
        ]
        + [pa.field(name, pa.string()) for name in model]
    )


class ResultsFolder:
    """``results.parquet/``: one model's scores, written in complete parts."""

    def __init__(self, path: str | Path, run: dict, labels: list[str]):
        self.path, self.run, self.schema = Path(path), run, results_schema(labels)

    def finished(self) -> set[str]:
        """Paths already scored here; refuses a folder that holds another model's scores."""
        record = self.path / RUN_FILE
        if record.is_file():
            earlier = json.loads(record.read_text())
            if earlier.get("weights_sha256") != self.run["weights_sha256"]:
                raise ScoringError(
                    f"{self.path} holds scores from model {earlier.get('name')} {earlier.get('version')} "
                    f"(weights {str(earlier.get('weights_sha256'))[:12]}); write this model's scores elsewhere"
                )
        elif self.path.exists() and any(self.path.iterdir()):
            raise ScoringError(f"{self.path} exists and is not a cxr score results folder")
        return {
            p
            for part in sorted(self.path.glob("part-*.parquet"))
            for p in pq.read_table(part, columns=["path"])["path"].to_pylist()
        }

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / RUN_FILE).write_text(json.dumps(self.run, indent=2))

    def write(self, rows: pa.Table) -> Path:
        """One complete part: written under a temporary name, then renamed (atomic on one filesystem)."""
        # A batch where no file was scored has all-null probability columns: cast gives them their types.
        table = rows.select(self.schema.names).cast(self.schema)
        final = self.path / f"part-{len(list(self.path.glob('part-*.parquet'))):06d}-{uuid.uuid4().hex[:8]}.parquet"
        staging = final.with_name("." + final.name + ".tmp")
        pq.write_table(table, staging)
        os.replace(staging, final)
        return final
