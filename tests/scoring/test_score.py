"""`cxr score` on real Ray Data with real radiographs: every file a row, interruption, --save."""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pymongo import MongoClient

from cxr_model.engine import load_engine
from cxr_model.preprocessing import open_image, resize_levels
from scoring.cli import get_args_parser, score_archive
from tests.helpers import make_dicom
from training.synthetic import render_out_of_scope

# Serve may hold the session cluster's CPUs (tests/serve runs in the same cluster): the actors ask
# for a sliver of a CPU so that they are always placed; they still run one inference thread.
CPUS = "0.05"


def arg_list(source, checkpoint, output, *extra) -> list[str]:
    return ["--input", str(source), "--checkpoint", str(checkpoint), "--output", str(output)] + [
        "--cpus-per-actor", CPUS, "--batch-size", "4", "--write-every", "8", *extra
    ]  # fmt: skip


def score_args(source, checkpoint, output, *extra) -> argparse.Namespace:
    return get_args_parser().parse_args(arg_list(source, checkpoint, output, *extra))


def train_split_radiographs(run: Path, sample: Path, count: int) -> list[Path]:
    """Radiographs the gates were fitted on, so that every one is in scope whatever the threshold."""
    import json

    entries = json.loads((run / "split_manifest.json").read_text())["entries"]
    return [sample / e["path"] for e in entries if e["split"] == "train"][:count]


@pytest.fixture
def mixed_folder(tmp_path, real_trained_run, real_sample) -> tuple[Path, list[Path]]:
    folder = tmp_path / "archive"
    (folder / "ward-b").mkdir(parents=True)
    real = train_split_radiographs(real_trained_run, real_sample, 10)
    for i, path in enumerate(real[:8]):
        shutil.copy(path, folder / ("ward-b" if i % 2 else "") / path.name)
    pixels = np.asarray(Image.open(real[8]).convert("L"))
    (folder / "exported.dcm").write_bytes(make_dicom(pixels, 8, patient_id="ARCH-1"))
    buffer = io.BytesIO()
    Image.open(real[9]).convert("L").save(buffer, format="JPEG", quality=92)
    (folder / "scan.jpg").write_bytes(buffer.getvalue())
    (folder / "broken.png").write_bytes(b"not a picture at all")
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.png").write_bytes(real[0].read_bytes()[:-4000])
    render_out_of_scope("noise", np.random.default_rng(0)).save(folder / "noise.png")
    (folder / "README.txt").write_text("not an image, not a candidate")
    (folder / ".hidden.png").write_bytes(real[0].read_bytes())
    return folder, real


def test_a_folder_scores_every_image_and_each_bad_file_is_a_row(ray_cluster, real_trained_run, mixed_folder, tmp_path):
    folder, real = mixed_folder
    checkpoint = real_trained_run / "checkpoint"
    summary = score_archive(score_args(folder, checkpoint, tmp_path / "results.parquet"))
    table = pd.read_parquet(tmp_path / "results.parquet")  # the folder reads as one table
    rows = {Path(p).name: row for p, row in zip(table["path"], table.to_dict("records"))}
    assert len(table) == summary["scored_now"] == 14 and ".hidden.png" not in rows and "README.txt" not in rows
    scored = [name for name, row in rows.items() if row["status"] == "scored"]
    assert sorted(scored) == sorted([p.name for p in real[:8]] + ["exported.dcm", "scan.jpg"])
    assert rows["broken.png"]["reason"] == "not_an_image" and rows["empty.png"]["reason"] == "empty"
    assert rows["cut.png"]["status"] == "error" and rows["cut.png"]["message"]
    assert rows["noise.png"]["status"] == "out_of_scope" and rows["noise.png"]["reason"] == "noise_image"

    # The probabilities are the engine's for the same file, and a probability distribution.
    engine = load_engine(str(checkpoint))
    labels = engine.card.labels
    names = sorted(scored)
    paths = [next(folder.rglob(name)) for name in names]
    levels = [
        resize_levels(open_image(p.read_bytes(), 10**8), engine.card.preprocess_spec.input_size)[None] for p in paths
    ]
    expected, _, _ = engine.forward(levels)
    got = np.array([[rows[n][f"p_{label}"] for label in labels] for n in names])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert all(rows[n]["top_label"] == labels[int(np.argmax(p))] for n, p in zip(names, got))
    assert set(table["weights_sha256"]) == {engine.card.weights_sha256}


def _parts(output: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in output.glob("part-*.parquet")}


def test_an_interrupted_run_resumes_without_rescoring_what_it_finished(
    ray_cluster, real_trained_run, real_sample, tmp_path
):
    manifest = tmp_path / "manifest.csv"
    entries = sorted(real_sample.glob("*/images/*.png"))[:240]
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id"])
        writer.writerows([os.path.relpath(p, tmp_path), f"P-{i}"] for i, p in enumerate(entries))
    output = tmp_path / "results.parquet"
    checkpoint = real_trained_run / "checkpoint"
    command = [str(Path(sys.executable).with_name("cxr")), "score", *arg_list(manifest, checkpoint, output)]
    command += ["--address", ray_cluster.get_runtime_context().gcs_address]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(_parts(output)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # as hard as an interruption gets: no clean-up runs
    process.wait(timeout=60)
    before = _parts(output)
    done = set(pd.read_parquet(output)["path"])
    assert 2 <= len(before) and len(done) < len(entries), "the run was not interrupted part-way"

    summary = score_archive(score_args(manifest, checkpoint, output))
    assert summary["scored_now"] == len(entries) - len(done)
    after = _parts(output)
    assert {name: after[name] for name in before} == before  # finished parts untouched
    new = pd.concat([pd.read_parquet(output / name) for name in set(after) - set(before)])
    assert not set(new["path"]) & done  # nothing finished was scored again
    table = pd.read_parquet(output)
    assert sorted(table["path"]) == sorted(str(p.resolve()) for p in entries) and table["path"].is_unique
    assert score_archive(score_args(manifest, checkpoint, output))["scored_now"] == 0


def test_save_stores_each_scored_dicom_once_as_the_service_would(
    ray_cluster, real_trained_run, real_sample, mongo_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("CXR_MONGODB_URI", mongo_server.uri)
    monkeypatch.setenv("CXR_MONGODB_DATABASE", "cxr_scoring")
    folder = tmp_path / "dicom"
    folder.mkdir()
    real = train_split_radiographs(real_trained_run, real_sample, 4)
    for i, path in enumerate(real[:3]):
        pixels = np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 16
        (folder / f"{i}.dcm").write_bytes(make_dicom(pixels, 12, patient_id=f"ARCH-{i}"))
    shutil.copy(real[3], folder / "no-patient.png")
    predictions = MongoClient(mongo_server.uri)["cxr_scoring"]["predictions"]
    for attempt in ("first", "again"):
        score_archive(score_args(folder, real_trained_run / "checkpoint", tmp_path / f"{attempt}.parquet", "--save"))
        table = pd.read_parquet(tmp_path / f"{attempt}.parquet").set_index("path")
        dicoms = table[table.index.str.endswith(".dcm")]
        assert list(dicoms["saved"]) == [True] * 3 and predictions.count_documents({}) == 3  # idempotent
        png = table.loc[str((folder / "no-patient.png").resolve())]
        assert not png["saved"] and "patient ID" in png["save_reason"]
    record = predictions.find_one({"patient_id": "ARCH-0"})
    row = table.loc[str((folder / "0.dcm").resolve())]
    assert record["top_label"] == row["top_label"] and abs(record["confidence"] - row["confidence"]) < 1e-12
    assert record["model"]["weights_sha256"] == row["weights_sha256"] and record["source"]["kind"] == "archive"
    gridfs = MongoClient(mongo_server.uri)["cxr_scoring"]["images.files"]
    assert gridfs.count_documents({"metadata.request_id": record["request_id"]}) == 1
