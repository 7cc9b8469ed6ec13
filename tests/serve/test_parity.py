"""What the service answers over HTTP is what the model says offline for the same file.

The served path (Ingress decode -> grey levels -> Ray handle -> BatchedClassifier batch ->
ONNX Runtime or torch) must give the probabilities of ``predict_batch(preprocess(file))``, the
one preprocessing path that evaluation uses, on both runtimes and with a calibration temperature
other than 1 (so a served path that skips calibration, or applies it twice, fails).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_model.checkpoint import load_network, save_checkpoint
from cxr_model.classifier import Classifier
from cxr_model.onnx_runtime import TOLERANCE, export_onnx
from cxr_model.preprocessing import preprocess
from cxr_model.scope import GATE_FILE, LAYOUT_FILE
from tests.serve.helpers import chest_png

TEMPERATURE = 1.7


def calibrated_copy(source: Path, target: Path, version: str, onnx: bool) -> Path:
    model, card = load_network(source)
    with torch.no_grad():  # spread the logits, so that the temperature visibly moves the probabilities
        model.head.bias.copy_(torch.tensor([2.0, -1.0, 0.5, 0.0]))
    card.version, card.created_at, card.calibration_temperature = version, "", TEMPERATURE
    save_checkpoint(model, card, target)
    for gate in (GATE_FILE, LAYOUT_FILE):  # the card names the gate files and their hashes
        shutil.copy(source / gate, target / gate)
    if onnx:
        export_onnx(target)  # a verified export: runtime "auto" then serves it with ONNX Runtime
    return target


def offline(checkpoint: Path, files: list[bytes], temperature: float | None = None) -> np.ndarray:
    model, card = load_network(checkpoint)
    if temperature is not None:
        card.calibration_temperature = temperature
    batch = torch.stack([preprocess(data, card.preprocess_spec) for data in files])
    return Classifier(model, card, device="cpu").predict_batch(batch)


def served(service, version: str, files: list[bytes]) -> tuple[str, np.ndarray]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the roll has landed once every replica answers with it
        bodies = [service.predict(data).json() for data in files]
        if all(b.get("model", {}).get("version") == version for b in bodies):
            labels = bodies[0]["model"]["labels"]
            runtime = {b["model"]["runtime"] for b in bodies}
            assert len(runtime) == 1
            return runtime.pop(), np.array([[b["probabilities"][label] for label in labels] for b in bodies])
        time.sleep(0.5)
    raise AssertionError(f"version {version} never served")


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_served_probabilities_equal_the_offline_model_on_each_runtime(service, tmp_path, runtime):
    version = f"parity-{runtime}"
    checkpoint = calibrated_copy(Path(service.checkpoint), tmp_path / version, version, onnx=runtime == "onnx")
    files = [chest_png(seed) for seed in (701, 702, 703)]
    expected = offline(checkpoint, files)
    uncalibrated = offline(checkpoint, files, temperature=1.0)
    assert np.abs(expected - uncalibrated).max() > 100 * TOLERANCE  # the temperature really changes the answer
    try:
        service.redeploy({"checkpoint": str(checkpoint), "batch_wait_timeout_s": 0.2})
        answered_by, got = served(service, version, files)
    finally:
        service.redeploy({"checkpoint": str(service.checkpoint), "batch_wait_timeout_s": 0.2})
    assert answered_by == runtime
    # ONNX Runtime is held to the export's own verified tolerance; torch is the same computation.
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE if runtime == "onnx" else 1e-5)
