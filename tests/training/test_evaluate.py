import csv
import json
import math

import numpy as np
import pytest
import torch

from cxr_model.checkpoint import save_checkpoint
from cxr_model.cli import main as cxr
from cxr_model.network import build_model
from tests.helpers import REPORT_FILES, make_card, png_bytes


@pytest.fixture
def constant_checkpoint(tmp_path):
    """A model whose head ignores the image: every prediction is Normal at exactly 0.6."""
    model = build_model("densenet121", 4, "none")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 0.0, math.log(4.5), 0.0]))  # e^b / (e^b + 3) = 0.6
    save_checkpoint(model, make_card(), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_cxr_evaluate_on_a_folder_matches_the_hand_computed_case(constant_checkpoint, tmp_path):
    data = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for folder, n in (("Normal", 3), ("COVID", 1)):
        (data / folder).mkdir(parents=True)
        for i in range(n):
            (data / folder / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (80, 80), dtype=np.uint8)))
    out = tmp_path / "report"
    assert cxr(["evaluate", "--checkpoint", str(constant_checkpoint), "--data-dir", str(data), "--out", str(out)]) == 0
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in REPORT_FILES[-3:]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((out / "report.json").read_text())
    # All four images predicted Normal with confidence 0.6; three are Normal.
    assert report["n"] == 4
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["ece"] == pytest.approx(0.15)
    assert report["confusion_matrix"] == [[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]
    normal = report["per_class"]["Normal"]
    assert (normal["precision"], normal["recall"]) == pytest.approx((0.75, 1.0))
    assert normal["f1"] == pytest.approx(6 / 7)
    assert report["per_class"]["COVID-19"]["recall"] == 0.0
    assert report["macro_f1"] == pytest.approx((6 / 7) / 4)
    lo, hi = report["accuracy_ci95"]
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0

    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 4
    assert all(r["predicted"] == "Normal" and float(r["p_Normal"]) == pytest.approx(0.6) for r in rows)
    assert sum(int(r["correct"]) for r in rows) == 3
    per_class = {r["label"]: r for r in csv.DictReader(open(out / "per_class.csv"))}
    assert float(per_class["Normal"]["f1"]) == pytest.approx(6 / 7)
    assert "| accuracy | 0.750 |" in (out / "report.md").read_text()


def test_cxr_evaluate_refuses_labels_the_model_does_not_know(constant_checkpoint, tmp_path):
    (tmp_path / "d" / "Tuberculosis").mkdir(parents=True)
    (tmp_path / "d" / "Normal").mkdir(parents=True)
    for folder in ("Tuberculosis", "Normal"):
        (tmp_path / "d" / folder / "a.png").write_bytes(png_bytes(np.zeros((20, 20), np.uint8) + len(folder)))
    with pytest.raises(SystemExit, match="Tuberculosis"):
        cxr(
            [
                "evaluate",
                "--checkpoint",
                str(constant_checkpoint),
                "--data-dir",
                str(tmp_path / "d"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
