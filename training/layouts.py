"""Find the images and labels of a data set on disk, whatever its layout.

Layouts (auto-detected, or named with ``--layout``):

- ``kaggle``: COVID-19 Radiography Database: ``<Class>/images/*.png`` (``masks/``
  ignored), possibly inside one wrapping folder as the archive unpacks.
- ``roboflow``: ``train/ valid/ test/``, each with class folders (or a
  ``_classes.csv`` multi-label sheet); the given splits are kept.
- ``csv``: a CSV with an image column and one 0/1 column per label (multi-label).
- ``imagefolder``: ``<Class>/*.png`` directly.

Every file is read once: its sha256 feeds de-duplication and the manifest hash,
and a full decode proves it usable. Unreadable, empty or truncated files are
skipped and listed with a reason, never a crash.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cxr_model.labels import MULTICLASS, MULTILABEL, LabelSet, canonical_order, normalize_class_name
from cxr_model.preprocessing import ImageDecodeError, PreprocessSpec, open_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SPLIT_ALIASES = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}
IMAGE_COLUMNS = ("image", "image index", "path", "filename", "file", "image_path", "img")
LAYOUTS = ("auto", "kaggle", "roboflow", "csv", "imagefolder")


class DatasetLayoutError(ValueError):
    """The folder does not look like any supported layout, or is inconsistent."""


@dataclass
class Sample:
    path: str  # relative to the data set root, POSIX separators
    labels: tuple[str, ...]  # the positive labels (exactly one for multiclass)
    split: str | None = None  # set when the layout fixes the split
    sha256: str = ""


@dataclass
class ScannedDataset:
    root: Path
    layout: str
    label_set: LabelSet
    samples: list[Sample]
    skipped: list[dict] = field(default_factory=list)

    def class_counts(self) -> Counter:
        return Counter(name for s in self.samples for name in s.labels)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _unwrap(root: Path) -> Path:
    """Archives often unpack into one wrapping folder; step into it."""
    while True:
        dirs = _subdirs(root)
        files = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | {".csv"}]
        if len(dirs) == 1 and not files and dirs[0].name.lower() not in SPLIT_ALIASES:
            root = dirs[0]
        else:
            return root


def detect_layout(root: Path) -> str:
    dirs = _subdirs(root)
    names = {d.name.lower() for d in dirs}
    if "train" in names and names & {"valid", "val", "validation", "test"}:
        return "roboflow"
    if dirs and sum((d / "images").is_dir() for d in dirs) >= max(2, len(dirs) // 2):
        return "kaggle"
    if list(root.glob("*.csv")):
        return "csv"
    if dirs and any(_images_in(d) for d in dirs):
        return "imagefolder"
    raise DatasetLayoutError(
        f"{root} matches no supported layout (Kaggle <Class>/images/, Roboflow train/valid/test, "
        "a CSV with an image column, or ImageFolder <Class>/*.png)"
    )


def _class_folder_samples(folder: Path, root: Path, split: str | None, images_subdir: bool) -> list[Sample]:
    samples = []
    for class_dir in _subdirs(folder):
        source = class_dir / "images" if images_subdir else class_dir
        if not source.is_dir():
            continue
        label = normalize_class_name(class_dir.name)
        samples += [Sample(p.relative_to(root).as_posix(), (label,), split) for p in _images_in(source)]
    return samples


def _read_label_csv(csv_path: Path, root: Path, split: str | None) -> tuple[list[Sample], list[str], list[dict]]:
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise DatasetLayoutError(f"{csv_path} has no rows")
    columns = list(rows[0].keys())
    lowered = {c.strip().lower(): c for c in columns}
    image_col = next((lowered[c] for c in IMAGE_COLUMNS if c in lowered), None)
    if image_col is None:
        raise DatasetLayoutError(f"{csv_path}: no image column (one of {', '.join(IMAGE_COLUMNS)})")
    label_cols = [
        c for c in columns if c != image_col and all((row[c] or "").strip() in ("0", "1", "0.0", "1.0") for row in rows)
    ]
    label_cols = [c for c in label_cols if normalize_class_name(c) != "No Finding"]
    if not label_cols:
        raise DatasetLayoutError(f"{csv_path}: no 0/1 label columns")
    by_name: dict[str, Path] | None = None
    samples, missing = [], []
    for row in rows:
        rel = row[image_col].strip()
        path = csv_path.parent / rel
        if not path.is_file():
            if by_name is None:  # NIH spreads images over images_00N/ folders
                by_name = {p.name: p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
            path = by_name.get(Path(rel).name, path)
        if not path.is_file():
            missing.append({"path": rel, "reason": "missing"})
            continue
        positives = tuple(normalize_class_name(c) for c in label_cols if float(row[c]) == 1.0)
        samples.append(Sample(path.relative_to(root).as_posix(), positives, split))
    return samples, [normalize_class_name(c) for c in label_cols], missing


def _list_samples(root: Path, layout: str) -> tuple[list[Sample], str, list[str] | None, list[dict]]:
    """Samples, task, the label names when the layout declares them, and missing files."""
    if layout == "kaggle":
        return _class_folder_samples(root, root, None, images_subdir=True), MULTICLASS, None, []
    if layout == "imagefolder":
        return _class_folder_samples(root, root, None, images_subdir=False), MULTICLASS, None, []
    if layout == "csv":
        sheets = sorted(root.glob("*.csv"))
        if len(sheets) != 1:
            raise DatasetLayoutError(f"expected one CSV in {root}, found {[p.name for p in sheets]}")
        samples, names, missing = _read_label_csv(sheets[0], root, None)
        return samples, MULTILABEL, names, missing
    if layout == "roboflow":
        samples, names, missing, task = [], None, [], MULTICLASS
        for split_dir in _subdirs(root):
            split = SPLIT_ALIASES.get(split_dir.name.lower())
            if split is None:
                continue
            sheet = split_dir / "_classes.csv"
            if sheet.is_file():
                found, names, lost = _read_label_csv(sheet, root, split)
                samples, missing, task = samples + found, missing + lost, MULTILABEL
            else:
                samples += _class_folder_samples(split_dir, root, split, images_subdir=False)
        return samples, task, names, missing
    raise DatasetLayoutError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")


def _check_file(path: Path, max_pixels: int) -> tuple[str, str | None]:
    """(sha256, None) for a usable image, ("", reason) otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", f"unreadable: {exc.strerror or exc}"
    try:
        open_image(data, max_pixels)
    except ImageDecodeError as exc:
        return "", exc.reason
    return hashlib.sha256(data).hexdigest(), None


def scan_dataset(
    data_dir: str | Path, layout: str = "auto", max_pixels: int = PreprocessSpec.max_pixels, threads: int = 4
) -> ScannedDataset:
    root = _unwrap(Path(data_dir).resolve())
    if not root.is_dir():
        raise DatasetLayoutError(f"{data_dir} is not a directory")
    layout = detect_layout(root) if layout == "auto" else layout
    samples, task, declared, skipped = _list_samples(root, layout)
    if not samples:
        raise DatasetLayoutError(f"no images found in {root} ({layout} layout)")
    with ThreadPoolExecutor(threads) as pool:
        checks = list(pool.map(lambda s: _check_file(root / s.path, max_pixels), samples))
    usable = []
    for sample, (digest, reason) in zip(samples, checks):
        if reason is None:
            sample.sha256 = digest
            usable.append(sample)
        else:
            skipped.append({"path": sample.path, "reason": reason})
    names = declared or sorted({label for s in usable for label in s.labels})
    label_set = LabelSet(task, tuple(canonical_order(names) if declared is None else names))
    return ScannedDataset(root, layout, label_set, usable, sorted(skipped, key=lambda d: d["path"]))
