"""Training configuration: one typed object from a YAML file plus command-line flags.

Unknown YAML keys are errors: a misspelt ``stage2: {lr: ...}`` must not be
silently ignored. The final configuration is saved next to the checkpoint.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml


@dataclass
class StageConfig:
    epochs: int
    lr: float
    weight_decay: float = 1e-4
    # Stop after this many epochs without a better validation macro-F1.
    patience: int = 3


@dataclass
class TrainConfig:
    data_dir: str = ""
    output_dir: str = "runs/cxr"
    layout: str = "auto"
    backbone: str = "densenet161"
    weights: str = "imagenet"
    image_size: int = 224
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)
    # A quick run on a big data set: at most this many images per label (0 = all), drawn with split_seed.
    max_per_label: int = 0
    seed: int = 0
    workers: int = 1
    gpu: bool = False
    # 0 = the cluster's CPUs shared equally between the workers: one worker on a 2-core machine
    # trains with 2 torch threads (Ray sets each worker's thread count from its CPUs).
    cpus_per_worker: int = 0
    batch_size: int = 32
    eval_batch_size: int = 64
    loader_workers: int = 2
    loss: str = "ce"  # ce | focal (multi-label always uses BCE, focal optional)
    class_weighting: bool = True
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    augment: bool = True
    hflip: bool = True
    stage1: StageConfig = field(default_factory=lambda: StageConfig(epochs=5, lr=1e-3))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(epochs=10, lr=1e-4))
    # Out-of-scope gate: target share of chest radiographs refused (sets the threshold on val),
    # and generated out-of-scope pictures per kind for measuring its misses.
    scope_false_rejection: float = 0.01
    scope_ood_per_kind: int = 40
    model_name: str = ""
    model_version: str = ""
    synthetic_demo: bool = False
    # Progress bars within epochs; off in tests and non-interactive logs.
    progress: bool = True

    def to_dict(self) -> dict:
        data = asdict(self)
        data["split_fractions"] = list(self.split_fractions)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _build(cls, data, "config")

    def validate(self) -> "TrainConfig":
        if not self.data_dir:
            raise ValueError("data_dir is required")
        if self.loss not in ("ce", "focal"):
            raise ValueError(f"loss must be ce or focal, not {self.loss!r}")
        if self.workers < 1 or self.batch_size < 1 or self.image_size < 32 or self.cpus_per_worker < 0:
            raise ValueError("workers and batch_size must be >= 1, image_size >= 32, cpus_per_worker >= 0")
        if self.max_per_label < 0:
            raise ValueError("max_per_label must be >= 0 (0 = every image)")
        if not 0 < self.scope_false_rejection < 0.5 or self.scope_ood_per_kind < 1:
            raise ValueError("scope_false_rejection must be in (0, 0.5) and scope_ood_per_kind >= 1")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError("split_fractions must be three numbers summing to 1")
        return self


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        default = getattr(cls(), name) if cls is TrainConfig else None
        if is_dataclass(default):
            value = _build(type(default), value, f"{where}.{name}")
        elif name == "split_fractions":
            value = tuple(float(v) for v in value)
        values[name] = value
    return cls(**values)


def load_config(path: str | Path | None) -> TrainConfig:
    if path is None:
        return TrainConfig()
    return TrainConfig.from_dict(yaml.safe_load(Path(path).read_text()) or {})


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _keeps(name: str) -> str:
    """Help suffix of a flag whose None default keeps the --config file's value (else TrainConfig's)."""
    value = TrainConfig()
    for part in name.split("."):
        value = getattr(value, part)
    return f"(default: the --config file's value, else {value})"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override the YAML file; every default is None meaning 'keep the file's value'."""
    flag = parser.add_argument
    flag("--config", help="YAML file with TrainConfig fields (default: none, TrainConfig's defaults)")
    flag(
        "--data-dir",
        dest="data_dir",
        help="the labelled data set folder (default: the --config file's value; one of them must give it)",
    )
    flag("--output-dir", dest="output_dir", help=f"where the run writes everything {_keeps('output_dir')}")
    flag(
        "--layout",
        choices=("auto", "kaggle", "roboflow", "csv", "imagefolder"),
        help=f"folder layout of --data-dir {_keeps('layout')}",
    )
    flag("--backbone", help=f"torchvision architecture {_keeps('backbone')}")
    flag("--weights", help=f"imagenet | none | path/to/torchvision_state_dict.pth {_keeps('weights')}")
    flag("--image-size", dest="image_size", type=int, help=f"model input side in pixels {_keeps('image_size')}")
    flag("--workers", type=int, help=f"Ray Train workers {_keeps('workers')}")
    flag("--gpu", action=argparse.BooleanOptionalAction, default=None, help=f"one GPU per worker {_keeps('gpu')}")
    flag(
        "--cpus-per-worker",
        dest="cpus_per_worker",
        type=int,
        help=f"CPUs per Ray Train worker, 0 = the cluster's CPUs / workers {_keeps('cpus_per_worker')}",
    )
    flag("--batch-size", dest="batch_size", type=int, help=f"training batch per worker {_keeps('batch_size')}")
    flag(
        "--loader-workers",
        dest="loader_workers",
        type=int,
        help=f"DataLoader processes per worker {_keeps('loader_workers')}",
    )
    flag("--loss", choices=("ce", "focal"), help=f"cross-entropy (BCE for multi-label) or focal {_keeps('loss')}")
    flag("--seed", type=int, help=f"training seed: init, order, augmentation {_keeps('seed')}")
    flag("--split-seed", dest="split_seed", type=int, help=f"seed of the train/val/test split {_keeps('split_seed')}")
    flag(
        "--max-per-label",
        dest="max_per_label",
        type=int,
        help=f"at most this many images per label, drawn with the split seed; 0 = all {_keeps('max_per_label')}",
    )
    flag(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"random flips, affine and contrast in training {_keeps('augment')}",
    )
    flag("--stage1-epochs", dest="stage1.epochs", type=int, help=f"head-only epochs {_keeps('stage1.epochs')}")
    flag("--stage1-lr", dest="stage1.lr", type=float, help=f"head-only learning rate {_keeps('stage1.lr')}")
    flag("--stage2-epochs", dest="stage2.epochs", type=int, help=f"full fine-tuning epochs {_keeps('stage2.epochs')}")
    flag("--stage2-lr", dest="stage2.lr", type=float, help=f"full fine-tuning learning rate {_keeps('stage2.lr')}")
    flag("--patience", type=int, help=f"early-stopping patience for both stages {_keeps('stage1.patience')}")
    flag(
        "--scope-false-rejection",
        dest="scope_false_rejection",
        type=float,
        help=f"target share of chest radiographs the out-of-scope gate refuses {_keeps('scope_false_rejection')}",
    )
    flag(
        "--model-name",
        dest="model_name",
        help="name in the model card (default: the --config file's value, else cxr-<backbone>)",
    )
    flag(
        "--model-version",
        dest="model_version",
        help="version in the model card (default: the --config file's value, else the UTC time of the run)",
    )
    flag(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress bars within epochs {_keeps('progress')}",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = load_config(args.config)
    for key, value in vars(args).items():
        if value is None or key in ("config", "func", "command", "patience"):
            continue
        if "." in key:
            stage, attr = key.split(".")
            setattr(getattr(config, stage), attr, value)
        elif hasattr(config, key):
            setattr(config, key, value)
    if getattr(args, "patience", None) is not None:
        config.stage1.patience = config.stage2.patience = args.patience
    return config.validate()
