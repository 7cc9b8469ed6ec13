"""``cxr promote``: a trained checkpoint into serving, only if its evaluation meets the floors.

    cxr promote runs/covid/checkpoint --models-dir /mnt/cxr/models --serve-config serve_config.yaml

The floors (each a flag, with its default) are read from the checkpoint's own model card, which
``cxr train`` writes from the held-out test split: accuracy, macro-F1, the sensitivity of named
labels (COVID-19 by default: a triage model that misses it is not promoted however accurate it is
overall), and the out-of-scope gate's false rejection of test radiographs. The weights' sha256 is
checked against the card. A checkpoint that misses any floor is refused with every reason, and
nothing is copied or changed. One that meets them all is copied to ``<models-dir>/<name>-<version>``
(the same version again is a no-op; another checkpoint under that name is refused), and
``user_config.checkpoint`` of ``BatchedClassifier`` in the serve config is set to it, every other line
of the file kept as it is. Then ``scripts/kube_serve_config.py`` carries it into the RayService and
``kubectl apply`` rolls it in place (README: "Roll a new model").
"""

from __future__ import annotations

import argparse
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the checkpoint module loads torch; `cxr --help` and other commands should not
    from cxr_model.checkpoint import ModelCard


@dataclass(frozen=True)
class Floors:
    accuracy: float = 0.85
    macro_f1: float = 0.80
    sensitivity: tuple[tuple[str, float], ...] = (("COVID-19", 0.90),)
    gate_false_rejection: float = 0.05  # at most


class PromotionRefused(Exception):
    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def shortfalls(card: ModelCard, floors: Floors) -> list[str]:
    """Every floor this card misses, in words (empty: promotable)."""
    test = card.metrics.get("test") or {}
    if not test:
        return ["the card has no test-split evaluation (train with a test split, or run cxr evaluate)"]
    reasons = []
    for name, value, floor in (
        ("accuracy", test.get("accuracy"), floors.accuracy),
        ("macro-F1", test.get("macro_f1"), floors.macro_f1),
    ):
        if value is None or value < floor:
            reasons.append(f"test {name} {_fmt(value)} is below the floor {floor:.3f}")
    sensitivity = test.get("sensitivity") or {}
    for label, floor in floors.sensitivity:
        value = sensitivity.get(label)
        if label not in card.labels:
            reasons.append(f"{label} is not a label of this model ({', '.join(card.labels)})")
        elif value is None or value < floor:
            reasons.append(f"test sensitivity for {label} {_fmt(value)} is below the floor {floor:.3f}")
    chest = ((card.scope or {}).get("rates") or {}).get("chest_radiographs") or {}
    rejected = (chest.get("test") or {}).get("false_rejection_rate")
    if rejected is None or rejected > floors.gate_false_rejection:
        limit = floors.gate_false_rejection
        reasons.append(f"the out-of-scope gate refuses {_fmt(rejected)} of test radiographs, above {limit:.3f}")
    return reasons


def _fmt(value) -> str:
    return "not recorded" if value is None else f"{value:.3f}"


def set_serve_checkpoint(text: str, checkpoint: str) -> str:
    """serve_config.yaml with BatchedClassifier's ``user_config.checkpoint`` set, nothing else changed."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"\s*- name: BatchedClassifier\s*$", line)), None)
    if start is None:
        raise ValueError("no BatchedClassifier deployment in the serve config")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2  # the deployment's keys
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) < indent
        ),
        len(lines),
    )
    block = next((i for i in range(start, end) if re.match(rf"\s{{{indent}}}user_config:\s*$", lines[i])), None)
    entry = f"{' ' * (indent + 2)}checkpoint: {checkpoint}\n"
    if block is None:
        return "".join(lines[:end] + [f"{' ' * indent}user_config:\n", entry] + lines[end:])
    inner = next(
        (i for i in range(block + 1, end) if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) <= indent),
        end,
    )
    for i in range(block + 1, inner):
        if re.match(rf"\s{{{indent + 2}}}checkpoint:", lines[i]):
            lines[i] = entry
            return "".join(lines)
    return "".join(lines[: block + 1] + [entry] + lines[block + 1 :])


def promote(checkpoint: Path, models_dir: Path, serve_config: Path | None, floors: Floors) -> Path:
    """Check, copy, point the serve config (if given) at the copy; ``PromotionRefused`` changes nothing."""
    from cxr_model.checkpoint import WEIGHTS_FILE, read_card, sha256_file

    card = read_card(checkpoint)
    reasons = shortfalls(card, floors)
    if sha256_file(checkpoint / WEIGHTS_FILE) != card.weights_sha256:
        reasons.insert(0, "the weights do not match the card's sha256 (altered or incomplete copy)")
    if reasons:
        raise PromotionRefused(reasons)
    target = models_dir / f"{card.name}-{card.version}"
    if target.exists():
        if read_card(target).weights_sha256 != card.weights_sha256:
            raise PromotionRefused([f"{target} holds another checkpoint under this name and version"])
    else:
        staging = models_dir / f".{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint, staging)
        staging.rename(target)  # whole or not at all: serving never sees a half-copied checkpoint
    if serve_config is not None:
        serve_config.write_text(set_serve_checkpoint(serve_config.read_text(), str(target)))
    return target


def _sensitivity(text: str) -> tuple[str, float]:
    label, _, floor = text.rpartition("=")
    if not label:
        raise argparse.ArgumentTypeError(f"LABEL=FLOOR, not {text!r}")
    return label, float(floor)


def register_promote(subparsers) -> None:
    defaults = Floors()
    parser = subparsers.add_parser("promote", help="put a checkpoint into serving if its evaluation meets the floors")
    parser.add_argument("checkpoint", type=Path, help="the trained checkpoint directory (its model card is read)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path("/mnt/cxr/models"),
        help="where serving reads models (default: %(default)s)",
    )
    parser.add_argument(
        "--serve-config",
        type=lambda text: Path(text) if text else None,
        default=Path("serve_config.yaml"),
        help="the Serve config to point at it; '' to only check and copy, as the training RayJob does on "
        "the cluster, where the repository is not (default: %(default)s)",
    )
    parser.add_argument(
        "--min-accuracy", type=float, default=defaults.accuracy, help="test accuracy floor (default: %(default)s)"
    )
    parser.add_argument(
        "--min-macro-f1", type=float, default=defaults.macro_f1, help="test macro-F1 floor (default: %(default)s)"
    )
    parser.add_argument(
        "--min-sensitivity",
        type=_sensitivity,
        action="append",
        default=None,
        help="LABEL=FLOOR test sensitivity floor, repeatable (default: COVID-19=0.9)",
    )
    parser.add_argument(
        "--max-gate-false-rejection",
        type=float,
        default=defaults.gate_false_rejection,
        help="largest share of test radiographs the out-of-scope gate may refuse (default: %(default)s)",
    )
    parser.set_defaults(func=_promote)


def _promote(args: argparse.Namespace) -> int:
    floors = Floors(
        args.min_accuracy,
        args.min_macro_f1,
        tuple(args.min_sensitivity) if args.min_sensitivity else Floors().sensitivity,
        args.max_gate_false_rejection,
    )
    try:
        target = promote(args.checkpoint, args.models_dir, args.serve_config, floors)
    except PromotionRefused as refused:
        print(f"not promoted: {args.checkpoint}")
        for reason in refused.reasons:
            print(f"  - {reason}")
        return 2
    if args.serve_config is None:
        print(f"promoted to {target}. To serve it: set BatchedClassifier's user_config.checkpoint in")
        print(f"serve_config.yaml to {target}, then scripts/kube_serve_config.py && kubectl apply -k k8s/overlays/gpu")
        return 0
    print(f"promoted to {target}; {args.serve_config} now serves it.")
    print("Next: .venv/bin/python scripts/kube_serve_config.py && kubectl apply -k k8s/overlays/gpu")
    return 0
