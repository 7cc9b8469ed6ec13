"""How the model agrees with its radiologists, per model version and label, from current reviews.

Per model version: the agreement rate (reviews that agree / reviews). Per label, the radiologist's
findings taken as the truth: PPV (of the records the model called positive for the label, the share
the radiologist did too) and sensitivity (of the records the radiologist found it in, the share the
model called). Each with a 95% Wilson interval (scipy), which stays inside [0, 1] and is honest at
the small counts a new installation has; no interval at n = 0.

Only reviewed records count, and radiologists review what the worklist puts first (likely
positives), so these figures describe the reviewed stream, not the whole population: sensitivity
over unreviewed negatives cannot be seen here. The page says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import binomtest

LEVEL = 0.95


@dataclass(frozen=True)
class Rate:
    k: int
    n: int
    low: float | None
    high: float | None

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @classmethod
    def of(cls, k: int, n: int) -> "Rate":
        if n == 0:
            return cls(0, 0, None, None)
        interval = binomtest(k, n).proportion_ci(LEVEL, method="wilson")
        return cls(k, n, float(interval.low), float(interval.high))

    def to_dict(self) -> dict:
        return {"k": self.k, "n": self.n, "value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class LabelAgreement:
    label: str
    ppv: Rate
    sensitivity: Rate

    def to_dict(self) -> dict:
        return {"label": self.label, "ppv": self.ppv.to_dict(), "sensitivity": self.sensitivity.to_dict()}


@dataclass(frozen=True)
class ModelAgreement:
    model_version: str
    model_name: str
    reviewed: int
    agreement: Rate
    labels: list[LabelAgreement]

    def to_dict(self) -> dict:
        return {
            "model_version": self.model_version,
            "model_name": self.model_name,
            "reviewed": self.reviewed,
            "agreement": self.agreement.to_dict(),
            "labels": [label.to_dict() for label in self.labels],
        }


def _per_label(reviews: list[dict]) -> list[LabelAgreement]:
    labels = []
    for review in reviews:
        labels += [label for label in review.get("labels") or [] if label not in labels]
    out = []
    for label in labels:
        called = [r for r in reviews if label in r["predicted"]]
        found = [r for r in reviews if label in r["findings"]]
        ppv = Rate.of(sum(label in r["findings"] for r in called), len(called))
        sensitivity = Rate.of(sum(label in r["predicted"] for r in found), len(found))
        out.append(LabelAgreement(label, ppv, sensitivity))
    return out


def agreement(reviews: list[dict]) -> list[ModelAgreement]:
    """One entry per model version among the current reviews, newest version name last."""
    versions: dict[str, list[dict]] = {}
    for review in reviews:
        versions.setdefault(review["model_version"], []).append(review)
    out = []
    for version, group in sorted(versions.items()):
        agreed = sum(r["verdict"] == "agree" for r in group)
        out.append(
            ModelAgreement(version, group[0]["model_name"], len(group), Rate.of(agreed, len(group)), _per_label(group))
        )
    return out
