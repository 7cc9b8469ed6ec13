"""The opt-in int8 export: ONNX Runtime static QDQ quantisation, refused unless it agrees with fp32.

``export_int8`` calibrates on images the caller gives (``cxr export --int8``: the checkpoint's
validation split), writes ``model.int8.onnx`` beside ``model.onnx`` and records it under ``int8`` in
``onnx.json`` only when, on held-out images, it agrees with fp32: top-1 agreement, the largest
probability difference, and the out-of-scope gate's accept/refuse decisions (the export quantises
the ``features`` output that feeds the gate too). A refused export leaves nothing behind.

Top-1 agreement is counted on the images fp32 does not flag low confidence. A near-tie (top two
probabilities within 2x the |dp| bound) can swap its labels under any perturbation that small, and
those images are served flagged "do not rely on this result"; counting them made the verdict depend
on the CPU: on one with AMX the same model flipped 2 of 100 test images, with fp32 margins of 0.02
and 0.001, both below 0.6 confidence. The raw agreement and those flips are recorded too.

Only convolutions are quantised (per-channel weights, percentile-calibrated activations); the first
one (it sees raw intensities) and the classifier head (its logits become the probabilities) stay
fp32, as do batch norms, pooling and the features. Measured on a DenseNet-121 trained on the real
sample: top-1 agreement 1.0 and max |dp| 0.023 on its test split, but the feature gate's
Mahalanobis distance moves by up to ~13% of its threshold, so images near the threshold would flip.
So the gate keeps an fp32 path: an image whose int8 distance falls within a band around the
threshold is run again in fp32 and answered from that run (``recheck_rows``). The band is the
largest distance error seen on the calibration images, with a safety factor; the agreement on the
held-out and out-of-scope images is then measured with the re-check in place, and recorded with
the share of images it re-ran.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cxr_model.checkpoint import read_card, sha256_file
from cxr_model.classifier import low_confidence, probabilities_from_logits
from cxr_model.onnx_runtime import INT8_FILE, ONNX_FILE, ONNX_RECORD, OUTPUTS, export_onnx, onnx_export_matches
from cxr_model.scope import FeatureGate, load_scope

RECHECK_SAFETY = 1.5  # the band is this many times the largest calibration-set distance error
CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class AgreementFloors:
    top1: float = 0.99  # share of the held-out images fp32 is confident about whose top label is the same
    max_abs_dp: float = 0.03  # largest |p_int8 - p_fp32| over every image and label
    gate: float = 1.0  # share of the gate's accept/refuse decisions that are the same


@dataclass(frozen=True)
class Agreement:
    held_out: int
    top1: float  # on the held-out images fp32 does not flag low confidence
    max_abs_dp: float
    gate_images: int  # held-out radiographs plus out-of-scope pictures
    gate: float
    gate_disagreements: int
    gate_recheck_band: float = 0.0  # relative to the threshold: int8 distances this close are re-run in fp32
    gate_rechecked: float = 0.0  # share of the compared images that the re-check ran in fp32
    confident: int = 0  # held-out images fp32 does not flag low confidence (what ``top1`` counts)
    top1_all: float = 0.0  # on every held-out image, near-ties included
    low_confidence_flips: int = 0  # top labels that changed on images served flagged low confidence

    def misses(self, floors: AgreementFloors) -> list[str]:
        checks = [
            (self.top1 >= floors.top1, f"top-1 agreement on confident images {self.top1:.4f} < {floors.top1}"),
            (self.max_abs_dp <= floors.max_abs_dp, f"max |dp| {self.max_abs_dp:.4f} > {floors.max_abs_dp}"),
            (self.gate >= floors.gate, f"gate agreement {self.gate:.4f} < {floors.gate}"),
        ]
        return [message for ok, message in checks if not ok]


class QuantizationRefused(RuntimeError):
    def __init__(self, agreement: Agreement, misses: list[str]):
        super().__init__("int8 export refused: " + "; ".join(misses))
        self.agreement = agreement


def cpu_int8_support() -> dict[str, bool]:
    """The CPU's int8/bf16 dot-product instructions (Linux). Without VNNI the int8 path still works,
    through slower instruction sequences, so the speed-up is smaller."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {flag: False for flag in CPU_FLAGS}
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {flag: flag in flags for flag in CPU_FLAGS}


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over an array of model inputs."""

    def __init__(self, inputs: np.ndarray, batch: int = 8):
        self.chunks = iter([inputs[i : i + batch] for i in range(0, len(inputs), batch)])

    def get_next(self):
        chunk = next(self.chunks, None)
        return None if chunk is None else {"input": np.ascontiguousarray(chunk, dtype=np.float32)}


def _kept_in_fp32(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    heads = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + heads[-1:]


def _quantize(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # One self-contained file first: the export keeps its weights in model.onnx.data, which the
    # pre-processing step would look for beside its own temporary copy.
    single, prepared = out.with_name("fp32.onnx"), out.with_name("prepared.onnx")
    onnx.save(onnx.load(str(fp32)), str(single))
    quant_pre_process(str(single), str(prepared), skip_symbolic_shape=True)
    single.unlink()
    quantize_static(
        str(prepared),
        str(out),
        _Batches(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile,
        nodes_to_exclude=_kept_in_fp32(prepared),
        op_types_to_quantize=["Conv"],
        extra_options={"CalibPercentile": 99.999},
    )
    prepared.unlink()


def _run(path: Path, inputs: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    parts = [session.run(OUTPUTS, {"input": inputs[i : i + batch]}) for i in range(0, len(inputs), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def recheck_rows(gate: FeatureGate | None, features: np.ndarray, band: float) -> np.ndarray:
    """Rows whose gate distance lies within ``band`` x threshold of the threshold: near enough that
    int8's error could flip the decision, so serving runs them again in fp32."""
    if gate is None or band <= 0 or not len(features):
        return np.zeros(0, int)
    return np.flatnonzero(np.abs(gate.distances(features) - gate.threshold) <= band * gate.threshold)


def recheck_band(fp32: Path, int8: Path, gate: FeatureGate | None, calibration: np.ndarray) -> float:
    if gate is None:
        return 0.0
    _, features32 = _run(fp32, calibration)
    _, features8 = _run(int8, calibration)
    error = np.abs(gate.distances(features8) - gate.distances(features32)).max()
    return float(RECHECK_SAFETY * error / gate.threshold)


def measure_agreement(
    fp32: Path,
    int8: Path,
    card,
    gate: FeatureGate | None,
    held_out: np.ndarray,
    out_of_scope: np.ndarray,
    band: float = 0.0,
) -> Agreement:
    def probabilities(logits):
        return probabilities_from_logits(torch.from_numpy(logits), card.task, card.calibration_temperature).numpy()

    both = np.concatenate([held_out, out_of_scope]) if len(out_of_scope) else held_out
    logits32, features32 = _run(fp32, both)
    logits8, features8 = _run(int8, both)
    n = len(held_out)
    p32, p8 = probabilities(logits32[:n]), probabilities(logits8[:n])
    # What serving does: near-threshold images are answered from their fp32 run, labels included.
    rechecked = recheck_rows(gate, features8, band)
    features8[rechecked] = features32[rechecked]
    p8[rechecked[rechecked < n]] = p32[rechecked[rechecked < n]]
    # A near-tie can swap its top two labels within the |dp| bound; such images are served flagged
    # low confidence ("do not rely on this result"), so the top-1 floor counts the others.
    confident = ~np.array([low_confidence(row, card) for row in p32], bool)
    same_top = p32.argmax(1) == p8.argmax(1)
    accepts32 = np.ones(len(both), bool) if gate is None else gate.distances(features32) <= gate.threshold
    accepts8 = np.ones(len(both), bool) if gate is None else gate.distances(features8) <= gate.threshold
    same_gate = accepts32 == accepts8
    return Agreement(
        n,
        float(same_top[confident].mean()) if confident.any() else 1.0,
        float(np.abs(p32 - p8).max()),
        len(both),
        float(same_gate.mean()),
        int((~same_gate).sum()),
        band,
        float(len(rechecked) / len(both)) if len(both) else 0.0,
        int(confident.sum()),
        float(same_top.mean()),
        int((~same_top[~confident]).sum()),
    )


def export_int8(
    checkpoint: str | Path,
    calibration: np.ndarray,
    held_out: np.ndarray,
    out_of_scope: np.ndarray,
    floors: AgreementFloors = AgreementFloors(),
    sources: dict | None = None,
) -> dict:
    """Quantise, measure against fp32, and keep the export only if it meets ``floors``; returns the
    record written under ``int8`` in onnx.json. Inputs are normalised model inputs [N, 3, S, S]."""
    directory = Path(checkpoint)
    card = read_card(directory)
    if not onnx_export_matches(directory, card):
        export_onnx(directory)
    _, gates = load_scope(directory, card)
    gate = gates.features if gates else None  # int8 changes the features; the layout gate reads pixels
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / INT8_FILE
        _quantize(directory / ONNX_FILE, candidate, calibration)
        band = recheck_band(directory / ONNX_FILE, candidate, gate, calibration)
        agreement = measure_agreement(directory / ONNX_FILE, candidate, card, gate, held_out, out_of_scope, band)
        misses = agreement.misses(floors)
        if misses:
            raise QuantizationRefused(agreement, misses)
        shutil.move(str(candidate), directory / INT8_FILE)
    record = {
        "file": INT8_FILE,
        "onnx_sha256": sha256_file(directory / INT8_FILE),
        "method": "ONNX Runtime static QDQ: int8 per-channel weights, uint8 activations (99.999th percentile "
        "calibration); first convolution and classifier head in fp32",
        "calibration_images": int(len(calibration)),
        "gate_recheck_band": agreement.gate_recheck_band,
        "agreement": asdict(agreement),
        "floors": asdict(floors),
        "sources": sources or {},
        "cpu_int8_support": cpu_int8_support(),
    }
    onnx_record = json.loads((directory / ONNX_RECORD).read_text())
    onnx_record["int8"] = record
    (directory / ONNX_RECORD).write_text(json.dumps(onnx_record, indent=2))
    return record
