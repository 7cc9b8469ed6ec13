import shutil

import numpy as np
import pytest
import torch

from cxr_model.checkpoint import load_network, save_checkpoint
from cxr_model.classifier import load_checkpoint
from cxr_model.cli import main as cxr
from cxr_model.onnx_runtime import ONNX_FILE, ONNX_RECORD, OnnxClassifier, export_onnx, onnx_export_matches


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    directory = tmp_path_factory.mktemp("onnx") / "ckpt"
    shutil.copytree(tiny_checkpoint, directory)
    assert cxr(["export", str(directory)]) == 0
    return directory


def test_onnx_runtime_matches_torch(exported):
    torch_classifier = load_checkpoint(exported, device="cpu")
    onnx_classifier = OnnxClassifier(exported, torch_classifier.card, threads=1)
    x = torch.randn(4, 3, 64, 64)
    np.testing.assert_allclose(onnx_classifier.predict_batch(x), torch_classifier.predict_batch(x), atol=1e-4)
    assert onnx_classifier.positives(onnx_classifier.predict_batch(x[:1])) == torch_classifier.positives(
        torch_classifier.predict_batch(x[:1])
    )


def test_a_stale_export_is_never_used(exported, tmp_path):
    directory = tmp_path / "retrained"
    shutil.copytree(exported, directory)
    model, card = load_network(directory)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    save_checkpoint(model, card, directory)  # new weights, old model.onnx
    assert not onnx_export_matches(directory, card)
    with pytest.raises(RuntimeError, match="cxr export"):
        OnnxClassifier(directory, card)


def test_onnx_gives_the_gate_the_same_features_as_torch(exported):
    from cxr_model.scope import load_scope

    torch_classifier = load_checkpoint(exported, device="cpu")
    onnx_classifier = OnnxClassifier(exported, torch_classifier.card, threads=1)
    gate = load_scope(exported, torch_classifier.card)[1].features
    x = torch.randn(3, 3, 64, 64)
    torch_probs, torch_features = torch_classifier.predict_with_features(x)
    onnx_probs, onnx_features = onnx_classifier.predict_with_features(x)
    assert onnx_features.shape == torch_features.shape == (3, gate.mean.shape[0])
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
    np.testing.assert_allclose(gate.distances(onnx_features), gate.distances(torch_features), rtol=1e-3)


def test_an_export_without_the_features_output_is_stale(exported, tmp_path):
    import json

    directory = tmp_path / "old-export"
    shutil.copytree(exported, directory)
    record = json.loads((directory / "onnx.json").read_text())
    assert record["outputs"] == ["logits", "features"]
    del record["outputs"]  # as written before the out-of-scope gate existed
    (directory / "onnx.json").write_text(json.dumps(record))
    assert not onnx_export_matches(directory, load_network(directory)[1])


def test_an_export_beyond_the_tolerance_is_refused_and_removed(tiny_checkpoint, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, directory)
    # No float32 ONNX graph reproduces torch to 1e-12 on a DenseNet: the check must refuse it.
    with pytest.raises(RuntimeError, match="differs from torch"):
        export_onnx(directory, tolerance=1e-12)
    assert not (directory / ONNX_FILE).exists() and not (directory / ONNX_RECORD).exists()
    _, card = load_network(directory)
    assert not onnx_export_matches(directory, card)  # so runtime "auto" serves torch, never the refused graph
