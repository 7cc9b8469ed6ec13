"""``cxr export-reviewed``: reviewed studies, labelled by their radiologists, written in a layout the
training reads, against the real database; nothing of the patient leaves but the pixels."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from serve.export_reviewed import export_reviewed
from serve.reviews import Reviews
from tests.serve.helpers import MODEL, chest_png, stored_record
from training.layouts import scan_dataset

LABELS = ["COVID-19", "Lung Opacity", "Normal", "Viral Pneumonia"]


def reviewed(records, patient: str, top: str, verdict: str, findings: list[str], model: dict | None = None) -> str:
    model = model or (MODEL | {"labels": LABELS, "task": "softmax"})
    probabilities = {label: (0.7 if label == top else 0.1) for label in model["labels"]}
    record = stored_record(
        patient_id=patient, top_label=top, confidence=0.7, probabilities=probabilities, positives=[top], model=model
    )
    saved = records.save(record, {"original": chest_png(int(patient[-4:]))})
    stored = records.get(saved.prediction_id)
    Reviews(records.db).add(stored, verdict, findings if verdict == "disagree" else [top], "", "dr-lee")
    return saved.prediction_id


def test_softmax_reviews_become_class_folders_labelled_by_the_radiologist(records, tmp_path):
    agreed = reviewed(records, "EXP-0001", "COVID-19", "agree", [])
    corrected = reviewed(records, "EXP-0002", "COVID-19", "disagree", ["Normal"])
    superseded = reviewed(records, "EXP-0003", "Normal", "agree", [])
    Reviews(records.db).add(records.get(superseded), "disagree", ["Viral Pneumonia"], "on second look", "dr-kim")
    records.save(stored_record(patient_id="EXP-0004"), {"original": chest_png(4)})  # never reviewed: not exported

    summary = export_reviewed(records.db, tmp_path / "out", None, 50_000_000)
    assert summary.layout == "imagefolder" and summary.written == 3 and summary.skipped == []
    data = scan_dataset(tmp_path / "out")  # what `cxr train` reads
    labels = {Path(s.path).stem: s.labels for s in data.samples}
    assert labels == {agreed: ("COVID-19",), corrected: ("Normal",), superseded: ("Viral Pneumonia",)}
    written = " ".join(str(p) for p in (tmp_path / "out").rglob("*")) + (tmp_path / "out" / "manifest.json").read_text()
    assert "EXP-000" not in written  # no patient identifier in a name or the manifest
    entry = records.db["audit"].find_one({"action": "export", "detail": {"$regex": "^export-reviewed"}})
    assert entry is not None and "3 images" in entry["detail"]


def test_since_keeps_only_later_reviews_and_multi_label_models_export_a_sheet(records, tmp_path):
    old = reviewed(records, "EXP-0010", "Normal", "agree", [])
    records.db["reviews"].update_many(
        {"prediction_id": old}, {"$set": {"at": datetime(2020, 1, 1, tzinfo=timezone.utc)}}
    )
    model = MODEL | {"labels": ["Effusion", "Nodule", "No Finding"], "task": "multilabel"}
    multi = reviewed(records, "EXP-0011", "Effusion", "disagree", ["Effusion", "Nodule"], model)
    summary = export_reviewed(records.db, tmp_path / "out", datetime.now(timezone.utc) - timedelta(days=1), 10**8)
    assert summary.layout == "csv" and summary.written == 1
    with open(tmp_path / "out" / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"image": f"images/{multi}.png", "Effusion": "1", "Nodule": "1", "No Finding": "0"}]
    (sample,) = scan_dataset(tmp_path / "out").samples
    assert set(sample.labels) == {"Effusion", "Nodule"}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["images"][0]["image"] == f"images/{multi}.png"


def test_the_command_refuses_a_folder_that_is_not_empty(mongo_server, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    env = {"CXR_MONGODB_URI": mongo_server.uri, "PATH": "/usr/bin:/bin"}
    cxr = str(Path(sys.executable).with_name("cxr"))
    result = subprocess.run([cxr, "export-reviewed", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "not empty" in result.stdout
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
