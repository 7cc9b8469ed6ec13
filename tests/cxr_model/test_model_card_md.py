"""MODEL_CARD.md rendered from a checkpoint's card, through `cxr model-card`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from cxr_model.checkpoint import save_checkpoint
from cxr_model.model_card_md import render_model_card
from cxr_model.network import build_model
from tests.helpers import make_card

METRICS = {
    "test": {
        "n": 120,
        "accuracy": 0.9,
        "accuracy_ci95": [0.84, 0.95],
        "macro_f1": 0.88,
        "macro_f1_ci95": [0.81, 0.93],
        "macro_roc_auc": 0.97,
        "ece": 0.031,
        "ece_before_calibration": 0.094,
        "low_confidence_rate": 0.05,
    },
    "calibration": {
        "method": "temperature scaling on the validation split",
        "temperature": 1.7,
        "val_ece_before": 0.1,
        "val_ece_after": 0.03,
    },
}


def test_markdown_states_use_data_metrics_with_cis_limits_and_traceability():
    card = make_card(
        metrics=METRICS,
        calibration_temperature=1.7,
        data_manifest_sha256="ab" * 32,
        weights_sha256="cd" * 32,
        code_version="0.1.0+abc1234",
        split_seed=42,
    )
    text = render_model_card(card)
    assert "## Intended use" in text and "not for diagnostic use" in text
    assert "Accuracy: 90.0% (95% CI 84.0% - 95.0%)" in text and "Macro F1: 88.0% (95% CI 81.0% - 93.0%)" in text
    assert "0.031 (before temperature scaling: 0.094)" in text and "T = 1.700" in text
    assert "shortcut" in text and "different source" in text
    assert "ab" * 32 in text and "cd" * 32 in text and "0.1.0+abc1234" in text
    assert "SYNTHETIC DEMO MODEL" not in text
    assert "SYNTHETIC DEMO MODEL" in render_model_card(make_card(synthetic_demo=True))


def test_cxr_model_card_writes_markdown_and_json(tmp_path):
    torch.manual_seed(0)
    card = make_card(backbone="resnet18", metrics=METRICS)
    save_checkpoint(build_model("resnet18", 4, "none"), card, tmp_path / "ck")
    cxr = Path(sys.executable).with_name("cxr")
    subprocess.run(
        [str(cxr), "model-card", str(tmp_path / "ck"), "--out", str(tmp_path / "MODEL_CARD.md")],
        check=True,
        timeout=120,
    )
    assert (tmp_path / "MODEL_CARD.md").read_text().startswith("# Model card: test-resnet18 0.0.1")
    shown = subprocess.run(
        [str(cxr), "model-card", str(tmp_path / "ck"), "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert json.loads(shown)["metrics"]["test"]["accuracy"] == 0.9


SCOPE = {
    "version": "cxr-scope-2",
    "method": "Image checks ... Mahalanobis ...",
    "image_limits": {},
    "feature_gate": {
        "file": "scope_gate.npz",
        "sha256": "ef" * 32,
        "threshold": 37.9,
        "target_false_rejection": 0.01,
        "fitted_on": "train split, 174 images",
        "threshold_from": "val split, 50 images",
        "feature_dim": 2208,
    },
    "layout_gate": {
        "file": "layout_gate.npz",
        "sha256": "ab" * 32,
        "threshold": 28.5,
        "target_false_rejection": 0.01,
        "fitted_on": "train split, 174 images",
        "threshold_from": "val split, 50 images",
        "feature_dim": 266,
    },
    "rates": {
        "chest_radiographs": {
            "test": {
                "n": 24,
                "refused": 1,
                "refused_by": {"unlike_chest_radiographs": 1},
                "false_rejection_rate": 1 / 24,
            }
        },
        "out_of_scope": {
            "limb_radiograph": {
                "n": 20,
                "refused": 19,
                "miss_rate": 0.05,
                "refused_by": {"unlike_chest_radiographs": 19},
                "source": "hands with finger rays",
            }
        },
        "out_of_scope_source": "generated pictures, 20 per kind",
    },
}


def test_markdown_describes_the_out_of_scope_gate_and_its_measured_rates():
    text = render_model_card(make_card(scope=SCOPE))
    section = text.split("## Out-of-scope gate")[1].split("## Known limits")[0]
    assert "Mahalanobis" in section and "threshold 37.9 over 2208 features" in section
    assert "| chest radiographs, test split | 24 | 1 | false rejection 4.2% |" in section
    assert "| limb radiograph | 20 | 19 (unlike_chest_radiographs 19) | miss 5.0% |" in section
    assert "generated pictures" in section
    assert "Layout gate: distance threshold 28.5 over 266 layout values" in section
    assert "- limb radiograph: hands with finger rays" in section
    unfitted = render_model_card(make_card()).split("## Out-of-scope gate")[1]
    assert "no feature gate was fitted" in unfitted
