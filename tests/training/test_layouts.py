import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr_model.labels import COVID4, normalize_class_name
from tests.helpers import png_bytes
from training.layouts import DatasetLayoutError, scan_dataset


def _image(seed: int) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (40, 40), dtype=np.uint8))


def test_kaggle_layout_inside_its_wrapping_folder(demo_data):
    dataset = scan_dataset(demo_data.parent)  # the archive's wrapping folder
    assert dataset.layout == "kaggle"
    assert dataset.label_set.names == COVID4
    assert dataset.class_counts() == {name: 52 for name in COVID4}  # 50 + 2 duplicates; masks ignored
    assert not any("/masks/" in s.path for s in dataset.samples)
    assert {s.path.split("/")[0] for s in dataset.samples} == {"COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"}


def test_roboflow_layout_keeps_its_splits(tmp_path):
    seed = 0
    for split in ("train", "valid", "test"):
        for folder in ("covid", "normal"):
            (tmp_path / split / folder).mkdir(parents=True)
            for i in range(3):
                seed += 1
                (tmp_path / split / folder / f"{i}.jpg.rf.{seed}.png").write_bytes(_image(seed))
    dataset = scan_dataset(tmp_path)
    assert dataset.layout == "roboflow"
    assert dataset.label_set.names == ("COVID-19", "Normal")
    assert {s.split for s in dataset.samples} == {"train", "val", "test"}
    assert sum(s.split == "val" for s in dataset.samples) == 6


def test_imagefolder_layout_and_class_name_normalisation(tmp_path):
    for i, folder in enumerate(["Covid", "lung_opacity", "NORMAL", "Viral-Pneumonia"]):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.png").write_bytes(_image(i))
        (tmp_path / folder / "b.png").write_bytes(_image(i + 10))
    dataset = scan_dataset(tmp_path)
    assert dataset.layout == "imagefolder"
    assert dataset.label_set.names == COVID4


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("Covid", "COVID-19"),
        ("COVID-19", "COVID-19"),
        ("covid", "COVID-19"),
        ("covid_19", "COVID-19"),
        ("Lung_Opacity", "Lung Opacity"),
        ("Viral Pneumonia", "Viral Pneumonia"),
        ("Pleural_Thickening", "Pleural Thickening"),
        ("Tuberculosis", "Tuberculosis"),
    ],
)
def test_class_names_normalise(raw, canonical):
    assert normalize_class_name(raw) == canonical


def test_csv_multilabel_layout(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(6):
        (tmp_path / "images" / f"{i:05d}.png").write_bytes(_image(100 + i))
        rows.append(
            {"Image Index": f"images/{i:05d}.png", "Effusion": i % 2, "Cardiomegaly": int(i < 2), "Patient Age": 40 + i}
        )
    rows.append({"Image Index": "images/gone.png", "Effusion": 1, "Cardiomegaly": 0, "Patient Age": 50})
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dataset = scan_dataset(tmp_path)
    assert dataset.layout == "csv"
    assert dataset.label_set.task == "multilabel"
    assert set(dataset.label_set.names) == {"Effusion", "Cardiomegaly"}  # age is not a 0/1 column
    by_path = {s.path: s.labels for s in dataset.samples}
    assert set(by_path["images/00001.png"]) == {"Effusion", "Cardiomegaly"}
    assert by_path["images/00004.png"] == ()
    assert dataset.skipped == [{"path": "images/gone.png", "reason": "missing"}]


def test_bad_files_are_skipped_and_reported(tmp_path, demo_data):
    root = tmp_path / "data"
    shutil.copytree(demo_data, root)
    bad = root / "Normal" / "images"
    (bad / "zero.png").write_bytes(b"")
    good = (bad / "Normal-1.png").read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 3])
    (bad / "notes.png").write_text("this is a text file with a .png name")
    dataset = scan_dataset(root)
    reasons = {Path(item["path"]).name: item["reason"] for item in dataset.skipped}
    assert reasons == {"zero.png": "empty", "truncated.png": "truncated", "notes.png": "not_an_image"}
    assert dataset.class_counts()["Normal"] == 52


def test_unrecognised_folder_is_a_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetLayoutError, match="no supported layout"):
        scan_dataset(tmp_path)
