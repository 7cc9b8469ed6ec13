import random
from collections import Counter, defaultdict

import pytest

from training.layouts import Sample, scan_dataset
from training.splits import assign_splits, build_manifest, load_manifest, save_manifest


@pytest.fixture(scope="module")
def scanned(demo_data):
    return scan_dataset(demo_data)


def test_split_is_stratified_70_20_10(scanned):
    manifest = build_manifest(scanned, seed=0)
    for label in manifest["labels"]:
        # Count distinct images: 52 files per class, of which 50 are distinct.
        distinct = {
            split: len({e["sha256"] for e in manifest["entries"] if e["split"] == split and e["labels"] == [label]})
            for split in ("train", "val", "test")
        }
        assert distinct == {"train": 35, "val": 10, "test": 5}
        assert sum(manifest["counts"][split].get(label, 0) for split in distinct) == 52


def test_byte_identical_images_never_straddle_splits(scanned):
    manifest = build_manifest(scanned, seed=3)
    splits_by_hash = defaultdict(set)
    for entry in manifest["entries"]:
        splits_by_hash[entry["sha256"]].add(entry["split"])
    assert manifest["duplicate_files"] == 8
    assert all(len(s) == 1 for s in splits_by_hash.values())
    duplicated = [h for h, n in Counter(e["sha256"] for e in manifest["entries"]).items() if n > 1]
    assert len(duplicated) == 8


def test_split_is_deterministic_and_independent_of_listing_order(scanned):
    first = build_manifest(scanned, seed=0)
    shuffled = list(scanned.samples)
    random.Random(5).shuffle(shuffled)
    assert assign_splits(shuffled, seed=0) == assign_splits(scanned.samples, seed=0)
    assert build_manifest(scanned, seed=0)["sha256"] == first["sha256"]
    assert build_manifest(scanned, seed=1)["sha256"] != first["sha256"]


def test_conflicting_labels_for_identical_bytes_are_dropped():
    samples = [Sample("a.png", ("Normal",), sha256="x"), Sample("b.png", ("COVID-19",), sha256="x")]
    samples += [Sample(f"n{i}.png", ("Normal",), sha256=f"n{i}") for i in range(5)]
    samples += [Sample(f"c{i}.png", ("COVID-19",), sha256=f"c{i}") for i in range(5)]

    class Fake:
        root, layout = "/data", "imagefolder"
        label_set = __import__("cxr_model").LabelSet("multiclass", ("COVID-19", "Normal"))
        skipped = []

    Fake.samples = samples
    manifest = build_manifest(Fake, seed=0)
    assert {e["path"] for e in manifest["entries"]}.isdisjoint({"a.png", "b.png"})
    assert {s["reason"] for s in manifest["skipped"]} == {"duplicate_with_conflicting_labels"}


def test_manifest_round_trip_and_tamper_check(scanned, tmp_path):
    manifest = build_manifest(scanned, seed=0)
    path = tmp_path / "m.json"
    save_manifest(manifest, path)
    assert load_manifest(path)["sha256"] == manifest["sha256"]
    manifest["entries"][0]["split"] = "test" if manifest["entries"][0]["split"] != "test" else "train"
    save_manifest(manifest, path)
    with pytest.raises(ValueError, match="hash mismatch"):
        load_manifest(path)


def test_layout_given_splits_are_kept_and_a_cross_split_duplicate_goes_to_train():
    class Fixed:
        root, layout = "/data", "roboflow"
        label_set = __import__("cxr_model").LabelSet("multiclass", ("COVID-19", "Normal"))
        skipped = []
        samples = [
            Sample("train/normal/a.png", ("Normal",), "train", "h1"),
            Sample("test/normal/a-copy.png", ("Normal",), "test", "h1"),  # the same bytes in test
            Sample("val/covid/b.png", ("COVID-19",), "val", "h2"),
            Sample("test/covid/c.png", ("COVID-19",), "test", "h3"),
        ]

    manifest = build_manifest(Fixed, seed=0)
    splits = {e["path"]: e["split"] for e in manifest["entries"]}
    assert manifest["split_source"] == "layout"
    assert splits == {
        "train/normal/a.png": "train",
        "test/normal/a-copy.png": "train",
        "val/covid/b.png": "val",
        "test/covid/c.png": "test",
    }
