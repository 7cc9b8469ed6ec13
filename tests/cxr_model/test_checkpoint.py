import json

import numpy as np
import pytest
import torch

from cxr_model.checkpoint import CheckpointError, read_card, save_checkpoint, sha256_file
from cxr_model.classifier import Classifier, load_checkpoint
from cxr_model.labels import MULTILABEL, NIH14
from cxr_model.network import build_model
from tests.helpers import make_card


def test_round_trip_gives_bit_identical_probabilities(tmp_path):
    torch.manual_seed(1)
    model = build_model("densenet121", 4, "none")
    # A few BatchNorm updates so running statistics are not their defaults.
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    card = make_card()
    inputs = torch.randn(5, 3, 64, 64)
    before = Classifier(model, card, device="cpu").predict_batch(inputs)
    save_checkpoint(model, card, tmp_path / "ckpt")
    after = load_checkpoint(tmp_path / "ckpt", device="cpu").predict_batch(inputs)
    assert np.array_equal(before, after)
    np.testing.assert_allclose(after.sum(axis=1), 1.0, rtol=1e-5)


def test_model_card_records_what_an_auditor_needs(tmp_checkpoint_card):
    directory, card = tmp_checkpoint_card
    stored = json.loads((directory / "model_card.json").read_text())
    for key in (
        "backbone",
        "task",
        "labels",
        "thresholds",
        "preprocessing",
        "training_config",
        "data_manifest_sha256",
        "split_seed",
        "metrics",
        "weights_sha256",
        "created_at",
        "code_version",
    ):
        assert key in stored
    assert stored["weights_sha256"] == sha256_file(directory / "weights.pt")
    assert stored["preprocessing"]["input_size"] == 64
    assert stored["preprocessing"]["version"] == "cxr-pre-2"
    assert stored["code_version"].startswith("0.1.0")
    assert stored["data_manifest_sha256"] == "ab" * 32 and stored["split_seed"] == 7


@pytest.fixture
def tmp_checkpoint_card(tmp_path):
    card = make_card(data_manifest_sha256="ab" * 32, split_seed=7, metrics={"stage1": {"val_macro_f1": 0.5}})
    save_checkpoint(build_model("densenet121", 4, "none"), card, tmp_path)
    return tmp_path, card


def test_tampered_weights_are_refused(tmp_checkpoint_card):
    directory, _ = tmp_checkpoint_card
    weights = directory / "weights.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(directory)


def test_unknown_card_fields_are_refused(tmp_checkpoint_card):
    directory, _ = tmp_checkpoint_card
    path = directory / "model_card.json"
    data = json.loads(path.read_text())
    data["lables"] = ["typo"]
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="unknown fields"):
        read_card(directory)


def test_multilabel_checkpoint_uses_sigmoid_and_per_label_thresholds(tmp_path):
    model = build_model("densenet121", len(NIH14), "none")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.linspace(-3, 3, len(NIH14)))
    thresholds = [0.5] * len(NIH14)
    thresholds[0] = 0.01  # Atelectasis called at a very low probability
    card = make_card(labels=NIH14, task=MULTILABEL, thresholds=thresholds)
    save_checkpoint(model, card, tmp_path)
    classifier = load_checkpoint(tmp_path, device="cpu")
    probs = classifier.predict_batch(torch.randn(2, 3, 64, 64))
    np.testing.assert_allclose(probs[0], torch.sigmoid(torch.linspace(-3, 3, len(NIH14))).numpy(), rtol=1e-5)
    assert not np.allclose(probs.sum(axis=1), 1.0)
    positives = classifier.positives(probs)[0]
    expected = ["Atelectasis"] + [n for n, p in zip(NIH14, probs[0]) if p >= 0.5]
    assert positives == list(dict.fromkeys(expected))


def test_served_probabilities_use_the_cards_temperature_and_flag_low_confidence(tmp_path):
    import torch

    from cxr_model.checkpoint import save_checkpoint
    from cxr_model.classifier import load_checkpoint, low_confidence
    from cxr_model.network import build_model
    from tests.helpers import make_card

    torch.manual_seed(0)
    model = build_model("resnet18", 4, "none")
    save_checkpoint(model, make_card(backbone="resnet18"), tmp_path / "t1")
    save_checkpoint(model, make_card(backbone="resnet18", calibration_temperature=4.0), tmp_path / "t4")
    x = torch.randn(3, 3, 64, 64)
    sharp, soft = (load_checkpoint(tmp_path / d, device="cpu").predict_batch(x) for d in ("t1", "t4"))
    assert (sharp.argmax(1) == soft.argmax(1)).all()
    assert (soft.max(1) < sharp.max(1)).all()  # a higher temperature softens, never reorders
    card = make_card(low_confidence_below=0.6)
    assert low_confidence([0.5, 0.3, 0.1, 0.1], card) and not low_confidence([0.7, 0.1, 0.1, 0.1], card)
    multilabel = make_card(task="multilabel", thresholds=[0.5, 0.3, 0.5, 0.5])
    assert low_confidence([0.9, 0.35, 0.0, 0.1], multilabel)  # 0.35 is within 0.1 of its 0.3 threshold
    assert not low_confidence([0.9, 0.8, 0.0, 0.1], multilabel)
