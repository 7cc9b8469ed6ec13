"""Deterministic, stratified, duplicate-aware train/val/test splits and their manifest.

Byte-identical files (same sha256) form one group and always land in the same
split, so a duplicate can never leak a training image into evaluation. Groups
are stratified by label (multi-label: by label combination, rare combinations
pooled), ordered by hash and shuffled with a seeded RNG, so the split depends
only on the files' contents, labels and the seed, not on listing order or paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from training.layouts import Sample, ScannedDataset

SPLITS = ("train", "val", "test")
_RARE = "__rare__"


def _allocate(count: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    n_val = round(count * fractions[1])
    n_test = round(count * fractions[2])
    # Small strata still put one group in each evaluation split they are meant to have.
    if count >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_val = min(n_val, count)
    n_test = min(n_test, count - n_val)
    return count - n_val - n_test, n_val, n_test


def assign_splits(samples: list[Sample], fractions=(0.7, 0.2, 0.1), seed: int = 0) -> dict[str, str]:
    """sha256 -> split for every group of identical files."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    group_labels: dict[str, tuple[str, ...]] = {}
    for sample in samples:
        group_labels.setdefault(sample.sha256, tuple(sorted(sample.labels)))
    strata: dict[str, list[str]] = defaultdict(list)
    for digest, labels in group_labels.items():
        strata["|".join(labels)].append(digest)
    for key in [k for k, groups in strata.items() if len(groups) < 3]:
        strata[_RARE].extend(strata.pop(key))

    assignment = {}
    for key in sorted(strata):
        groups = sorted(strata[key])
        random.Random(f"{seed}:{key}").shuffle(groups)
        n_train, n_val, _ = _allocate(len(groups), fractions)
        for i, digest in enumerate(groups):
            assignment[digest] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return assignment


def _fixed_splits(samples: list[Sample]) -> dict[str, str]:
    """Layouts that ship their own split: a duplicate across splits goes to the earliest."""
    assignment: dict[str, str] = {}
    for sample in sorted(samples, key=lambda s: SPLITS.index(s.split)):
        assignment.setdefault(sample.sha256, sample.split)
    return assignment


def cap_per_label(dataset: ScannedDataset, limit: int, seed: int = 0) -> ScannedDataset:
    """At most ``limit`` images per label (per split where the layout fixes splits), drawn at random
    with ``seed``: a quick run on a big data set. 0 keeps every image."""
    if limit <= 0:
        return dataset
    groups = defaultdict(list)
    for sample in dataset.samples:  # multi-label images count under their first label
        groups[(sample.split or "", sample.labels[0] if sample.labels else "")].append(sample)
    rng, kept = random.Random(seed), []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda s: s.path)
        rng.shuffle(members)
        kept += members[:limit]
    return dataclasses.replace(dataset, samples=sorted(kept, key=lambda s: s.path))


def build_manifest(dataset: ScannedDataset, fractions=(0.7, 0.2, 0.1), seed: int = 0) -> dict:
    # The same bytes under two different labels cannot be trusted for either.
    labels_by_hash = defaultdict(set)
    for sample in dataset.samples:
        labels_by_hash[sample.sha256].add(tuple(sorted(sample.labels)))
    conflicted = {h for h, labels in labels_by_hash.items() if len(labels) > 1}
    samples = [s for s in dataset.samples if s.sha256 not in conflicted]
    skipped = dataset.skipped + [
        {"path": s.path, "reason": "duplicate_with_conflicting_labels"}
        for s in dataset.samples
        if s.sha256 in conflicted
    ]
    fixed = all(s.split is not None for s in samples)
    assignment = _fixed_splits(samples) if fixed else assign_splits(samples, fractions, seed)
    entries = sorted(
        (
            {"path": s.path, "labels": list(s.labels), "sha256": s.sha256, "split": assignment[s.sha256]}
            for s in samples
        ),
        key=lambda e: e["path"],
    )
    copies = Counter(s.sha256 for s in samples)
    counts = {
        split: dict(Counter(label for e in entries if e["split"] == split for label in e["labels"])) for split in SPLITS
    }
    manifest = {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "task": dataset.label_set.task,
        "labels": list(dataset.label_set.names),
        "split_seed": seed,
        "split_fractions": list(fractions),
        "split_source": "layout" if fixed else "stratified",
        "entries": entries,
        "skipped": sorted(skipped, key=lambda d: d["path"]),
        "duplicate_files": sum(n - 1 for n in copies.values() if n > 1),
        "counts": counts,
    }
    manifest["sha256"] = manifest_hash(manifest)
    return manifest


def manifest_hash(manifest: dict) -> str:
    """Identity of the data: labels, task and every entry's path, content hash and split."""
    core = {k: manifest[k] for k in ("task", "labels", "entries")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def save_manifest(manifest: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(manifest, indent=1))


def load_manifest(path: str | Path) -> dict:
    manifest = json.loads(Path(path).read_text())
    if manifest_hash(manifest) != manifest.get("sha256"):
        raise ValueError(f"{path}: manifest hash mismatch (edited after it was written?)")
    return manifest


def split_entries(manifest: dict, split: str) -> list[dict]:
    return [e for e in manifest["entries"] if e["split"] == split]
