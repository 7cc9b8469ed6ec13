"""Label sets and class-name normalisation.

A task is either ``multiclass`` (softmax, exactly one label per image, e.g. the
four COVID-19 Radiography Database classes) or ``multilabel`` (sigmoid, a
threshold per label, e.g. the 14 NIH ChestX-ray14 findings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MULTICLASS = "multiclass"
MULTILABEL = "multilabel"

COVID4 = ("COVID-19", "Lung Opacity", "Normal", "Viral Pneumonia")
NIH14 = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural Thickening",
    "Hernia",
)

# Folder and column spellings seen in public releases (Kaggle, Roboflow exports,
# NIH CSVs), keyed by the name with case and separators removed.
_CANONICAL = {
    "covid": "COVID-19",
    "covid19": "COVID-19",
    "covid2019": "COVID-19",
    "lungopacity": "Lung Opacity",
    "opacity": "Lung Opacity",
    "normal": "Normal",
    "nofinding": "No Finding",
    "viralpneumonia": "Viral Pneumonia",
    **{re.sub(r"[^a-z0-9]", "", name.lower()): name for name in NIH14},
    "pleuralthickening": "Pleural Thickening",
}


def normalize_class_name(raw: str) -> str:
    """Map a folder or column name to its canonical label ("covid" -> "COVID-19").

    Unknown names are kept (stripped, underscores as spaces) so a custom data
    set defines its own label set.
    """
    key = re.sub(r"[^a-z0-9]", "", raw.lower())
    if key in _CANONICAL:
        return _CANONICAL[key]
    return re.sub(r"[_\s]+", " ", raw).strip()


def canonical_order(labels: set[str] | list[str]) -> list[str]:
    """Known label sets keep their published order; anything else sorts by name."""
    labels = set(labels)
    for known in (COVID4, NIH14):
        if labels <= set(known):
            return [name for name in known if name in labels]
    return sorted(labels)


@dataclass(frozen=True)
class LabelSet:
    task: str
    names: tuple[str, ...]
    # Per-label decision thresholds; used by multilabel tasks only.
    thresholds: tuple[float, ...] = field(default=())

    def __post_init__(self):
        if self.task not in (MULTICLASS, MULTILABEL):
            raise ValueError(f"unknown task {self.task!r}")
        if len(self.names) < 2 and self.task == MULTICLASS:
            raise ValueError("a multiclass task needs at least two labels")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate label names in {self.names}")
        if self.task == MULTILABEL and not self.thresholds:
            object.__setattr__(self, "thresholds", (0.5,) * len(self.names))
        if self.thresholds and len(self.thresholds) != len(self.names):
            raise ValueError("one threshold per label is required")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def named(cls, name: str) -> "LabelSet":
        if name == "covid4":
            return cls(MULTICLASS, COVID4)
        if name == "nih14":
            return cls(MULTILABEL, NIH14)
        raise ValueError(f"unknown label set {name!r}; known: covid4, nih14")

    def with_thresholds(self, thresholds) -> "LabelSet":
        return LabelSet(self.task, self.names, tuple(float(t) for t in thresholds))
