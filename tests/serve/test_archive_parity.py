"""`cxr score` answers as the running service does, file for file (real Serve, real Ray Data, real HTTP)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.cli import get_args_parser, score_archive
from tests.helpers import make_dicom
from tests.serve.helpers import chest_png
from training.synthetic import render_chest, render_out_of_scope


def test_archive_scores_equal_the_services_answers_for_the_same_files(service, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    for seed in range(40, 52):
        (folder / f"chest-{seed}.png").write_bytes(chest_png(seed))
    grey = np.round(render_chest("Lung Opacity", np.random.default_rng(60)) * 65535).astype(np.uint16)
    (folder / "chest-60.dcm").write_bytes(make_dicom(grey, 16, patient_id="PAR-1"))
    for kind in ("noise", "limb_radiograph"):
        render_out_of_scope(kind, np.random.default_rng(7)).save(folder / f"{kind}.png")
    args = get_args_parser().parse_args(
        ["--input", str(folder), "--checkpoint", str(service.checkpoint), "--output", str(tmp_path / "out.parquet")]
        # Serve holds this cluster's CPUs: the actor asks for a sliver so that it is placed.
        + ["--cpus-per-actor", "0.05", "--batch-size", "5"]
    )
    score_archive(args)
    table = pd.read_parquet(tmp_path / "out.parquet")
    assert len(table) == 15
    for row in table.to_dict("records"):
        data = open(row["path"], "rb").read()
        answer = service.predict(
            data, filename=row["path"].rsplit("/", 1)[-1], patient_id="P-PARITY", confirm_patient_id="1"
        )
        if row["status"] == "out_of_scope":
            assert answer.status_code == 422, (row["path"], answer.text)
            assert answer.json()["error"]["reason"] == row["reason"]
            continue
        assert row["status"] == "scored" and answer.status_code == 200, (row, answer.text)
        body = answer.json()
        for label, probability in body["probabilities"].items():
            assert abs(row[f"p_{label}"] - probability) <= 1e-6, (row["path"], label)
        assert body["top_label"] == row["top_label"] and body["model"]["weights_sha256"] == row["weights_sha256"]
        assert body["model"]["runtime"] == row["runtime"] and list(body["positives"]) == list(row["positives"])
    assert set(table["status"]) == {"scored", "out_of_scope"}
