"""Checkpoint format: a directory with ``weights.pt`` and ``model_card.json``.

The card says everything needed to reproduce and audit a prediction: backbone,
task and labels (with thresholds), preprocessing, training config, the data
manifest hash and split seed, metrics per stage, the sha256 of the weights
file, when and from which code it was made.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from cxr_model.labels import LabelSet
from cxr_model.network import CXRNet, build_model
from cxr_model.preprocessing import PreprocessSpec

WEIGHTS_FILE = "weights.pt"
CARD_FILE = "model_card.json"
CARD_SCHEMA_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, incomplete or tampered with."""


@dataclass
class ModelCard:
    name: str
    version: str
    backbone: str
    task: str
    labels: list[str]
    preprocessing: dict
    thresholds: list[float] = field(default_factory=list)
    training_config: dict = field(default_factory=dict)
    data_manifest_sha256: str = ""
    split_seed: int | None = None
    metrics: dict = field(default_factory=dict)
    weights_sha256: str = ""
    created_at: str = ""
    code_version: str = ""
    # Temperature scaling fitted on the validation split: probabilities = f(logits / T).
    calibration_temperature: float = 1.0
    # A single-label prediction whose (calibrated) top probability is below this is flagged.
    low_confidence_below: float = 0.6
    # The out-of-scope gate: image limits, the feature gate's file/sha256/threshold, measured rates.
    scope: dict = field(default_factory=dict)
    intended_use: str = "Decision support for chest radiograph triage; not for diagnostic use."
    synthetic_demo: bool = False
    # Verified runtime exports beyond fp32 ONNX, e.g. {"onnx_int8": {agreement with fp32, method, ...}}.
    exports: dict = field(default_factory=dict)
    # What the validation split's predictions looked like, for drift without ground truth (cxr_model.drift):
    # top-label shares, confidence and feature-gate distance histograms. Empty on cards made before it.
    drift_reference: dict = field(default_factory=dict)
    schema_version: int = CARD_SCHEMA_VERSION

    @property
    def label_set(self) -> LabelSet:
        return LabelSet(self.task, tuple(self.labels), tuple(self.thresholds))

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocessing)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"model card has unknown fields: {sorted(unknown)}")
        return cls(**data)


def code_version() -> str:
    """Package version plus the git commit: from the checkout, else as the image's build recorded it."""
    try:
        version = metadata.version("cxr-serve")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{version}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    # An installed image: its build wrote the commit beside this module (k8s/Dockerfile), as there is
    # no .git. Read as text, not imported: importing it would go through the package's __init__.
    build = Path(__file__).with_name("_build.py")
    found = re.search(r'COMMIT = "([0-9a-f]+)"', build.read_text()) if build.is_file() else None
    return f"{version}+g{found.group(1)}" if found else version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(model: CXRNet, card: ModelCard, directory: str | Path) -> ModelCard:
    """Write weights and card; fills in weights_sha256, created_at and code_version."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)
    card.weights_sha256 = sha256_file(directory / WEIGHTS_FILE)
    card.created_at = card.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    card.code_version = card.code_version or code_version()
    return write_card(card, directory)


def write_card(card: ModelCard, directory: str | Path) -> ModelCard:
    """The card alone, atomically (a reader never sees half a file)."""
    tmp = Path(directory) / (CARD_FILE + ".tmp")
    tmp.write_text(json.dumps(card.to_dict(), indent=2, sort_keys=True))
    tmp.replace(Path(directory) / CARD_FILE)
    return card


def read_card(directory: str | Path) -> ModelCard:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CARD_FILE} in {directory}")
    return ModelCard.from_dict(json.loads(path.read_text()))


def load_network(directory: str | Path, verify: bool = True) -> tuple[CXRNet, ModelCard]:
    directory = Path(directory)
    card = read_card(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in {directory}")
    if verify and sha256_file(weights) != card.weights_sha256:
        raise CheckpointError(f"{weights} does not match the sha256 in its model card")
    model = build_model(card.backbone, len(card.labels), weights="none")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    return model, card
