"""ONNX export of a checkpoint and an ONNX Runtime classifier with the same interface.

``export_onnx`` writes ``model.onnx`` beside ``weights.pt`` and ``onnx.json``
recording which weights it was made from and how closely it matched torch on
random inputs; ``OnnxClassifier`` only loads an export whose record names the
checkpoint's current weights, so a stale export can never serve a new model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cxr_model.checkpoint import ModelCard, load_network, sha256_file
from cxr_model.classifier import positive_labels, probabilities_from_logits

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # the opt-in quantised export (cxr_model.quantize), recorded under "int8"
PRECISIONS = ("fp32", "int8")
OUTPUTS = ["logits", "features"]  # features feed the out-of-scope gate
ONNX_RECORD = "onnx.json"
TOLERANCE = 1e-4  # max |probability difference| between torch and ONNX Runtime


class _LogitsAndFeatures(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_with_features(x)


def export_onnx(checkpoint: str | Path, tolerance: float = TOLERANCE) -> dict:
    """Export, then check ONNX Runtime against torch on batches of 1 and 3; returns the record."""
    import onnxruntime as ort

    directory = Path(checkpoint)
    model, card = load_network(directory)
    size = card.preprocess_spec.input_size
    batch = torch.export.Dim("batch", min=1, max=1024)
    path = directory / ONNX_FILE
    torch.onnx.export(
        _LogitsAndFeatures(model).eval(),
        (torch.randn(2, 3, size, size),),
        str(path),
        input_names=["input"],
        output_names=OUTPUTS,
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = worst_features = 0.0
    generator = torch.Generator().manual_seed(0)
    for n in (1, 3):
        x = torch.randn(n, 3, size, size, generator=generator)
        with torch.inference_mode():
            logits, features = model.forward_with_features(x)
        expected = probabilities_from_logits(logits, card.task).numpy()
        got_logits, got_features = session.run(OUTPUTS, {"input": x.numpy()})
        got = probabilities_from_logits(torch.from_numpy(got_logits), card.task)
        worst = max(worst, float(np.abs(got.numpy() - expected).max()))
        # Features feed a distance, so they are compared relative to their own scale.
        scale = float(features.abs().max()) or 1.0
        worst_features = max(worst_features, float(np.abs(got_features - features.numpy()).max()) / scale)
    if worst > tolerance or worst_features > tolerance:
        path.unlink()
        raise RuntimeError(
            f"ONNX output differs from torch by {max(worst, worst_features):.2e} (> {tolerance:.0e}); export removed"
        )
    record = {
        "weights_sha256": card.weights_sha256,
        "onnx_sha256": sha256_file(path),
        "outputs": OUTPUTS,
        "max_abs_probability_diff": worst,
        "max_rel_feature_diff": worst_features,
        "tolerance": tolerance,
    }
    (directory / ONNX_RECORD).write_text(json.dumps(record, indent=2))
    return record


def read_record(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / ONNX_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def onnx_export_matches(checkpoint: str | Path, card: ModelCard, precision: str = "fp32") -> bool:
    """The export of ``precision`` exists, is the one recorded, and was made from these weights."""
    directory = Path(checkpoint)
    record = read_record(directory)
    if not (directory / ONNX_FILE).is_file() or not record:
        return False
    fp32 = (
        record.get("weights_sha256") == card.weights_sha256
        and record.get("outputs") == OUTPUTS
        and record.get("onnx_sha256") == sha256_file(directory / ONNX_FILE)
    )
    if precision == "fp32" or not fp32:
        return fp32
    int8 = record.get("int8") or {}
    return (directory / INT8_FILE).is_file() and int8.get("onnx_sha256") == sha256_file(directory / INT8_FILE)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    # ORT's pool spin-waits by default, burning the cores the HTTP proxy and ingress share.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """CPU inference through ONNX Runtime; same ``predict_batch`` contract as ``Classifier``."""

    device = torch.device("cpu")

    def __init__(self, checkpoint: str | Path, card: ModelCard, threads: int = 1, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if not onnx_export_matches(checkpoint, card, precision):
            flag = " --int8" if precision == "int8" else ""
            raise RuntimeError(
                f"no verified {precision} ONNX export for these weights in {checkpoint}; run `cxr export{flag}`"
            )
        self.precision = precision
        directory = Path(checkpoint)
        self.session = _session(directory / (INT8_FILE if precision == "int8" else ONNX_FILE), threads)
        # int8: near-threshold images go through fp32 again so the out-of-scope gate decides as fp32
        # would (cxr_model.quantize.recheck_rows); the band was measured when the export was made.
        self.gate_recheck_band = float((read_record(directory).get("int8") or {}).get("gate_recheck_band", 0.0))
        self.fp32 = _session(directory / ONNX_FILE, threads) if precision == "int8" and self.gate_recheck_band else None
        self.card = card
        self.labels = list(card.labels)
        self.task = card.task

    def predict_with_features(self, tensors, fp32: bool = False) -> tuple[np.ndarray, np.ndarray]:
        batch = torch.stack(list(tensors)) if not isinstance(tensors, torch.Tensor) else tensors
        if batch.dim() == 3:
            batch = batch.unsqueeze(0)
        session = self.fp32 if fp32 and self.fp32 is not None else self.session
        logits, features = session.run(OUTPUTS, {"input": batch.float().contiguous().numpy()})
        probs = probabilities_from_logits(torch.from_numpy(logits), self.task, self.card.calibration_temperature)
        return probs.numpy(), features

    def predict_batch(self, tensors) -> np.ndarray:
        return self.predict_with_features(tensors)[0]

    def positives(self, probabilities: np.ndarray) -> list[list[str]]:
        return positive_labels(probabilities, self.card)
