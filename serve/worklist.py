"""The reading order: which unreviewed, analysed record a radiologist should read next.

Urgency. Each label has a weight (``CXR_WORKLIST_WEIGHTS``; a label not named weighs
``default_weight``). A record's urgency is its largest weight x probability, and the label that
gives it is named beside it, so a reader sees why ("COVID-19 82%"). With the default weights a
likely COVID-19 outranks a likely viral pneumonia, and a confident lung opacity outranks an unsure
COVID-19. People read bands, not scores: ``urgent`` at or above ``urgent_at``, ``soon`` at or above
``soon_at``, else ``routine``. Low-confidence predictions are flagged, not reordered: the flag says
"do not rely on this ranking".

Escalation. Ordered by urgency alone, a busy reading room never reaches the routine studies. So an
entry that has waited longer than ``max_wait`` is escalated: escalated entries come first, the
longest wait first; the rest follow by urgency, high first, then by age, oldest first.

Pure functions of the records and the time given: tested with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

BANDS = ("urgent", "soon", "routine")


@dataclass(frozen=True)
class UrgencyPolicy:
    weights: dict[str, float] = field(default_factory=dict)
    urgent_at: float = 1.5
    soon_at: float = 0.75
    max_wait: timedelta = timedelta(hours=4)
    default_weight: float = 1.0

    def urgency(self, probabilities: dict[str, float]) -> tuple[float, str | None]:
        """(weight x probability at its largest, the label that gives it)."""
        best, driver = 0.0, None
        for label, probability in probabilities.items():
            score = self.weights.get(label, self.default_weight) * float(probability)
            if driver is None or score > best:
                best, driver = score, label
        return best, driver

    def band(self, urgency: float) -> str:
        return "urgent" if urgency >= self.urgent_at else "soon" if urgency >= self.soon_at else "routine"


@dataclass(frozen=True)
class WorklistEntry:
    prediction_id: str
    patient_id: str
    created_at: datetime
    top_label: str
    confidence: float
    low_confidence: bool
    urgency: float
    driver: str | None  # the label that sets the urgency
    driver_probability: float
    band: str
    escalated: bool
    waited: timedelta
    # Where it came from: the sending AE title of a DICOM instance (the modality or PACS node), else
    # the caller (a ward's key, a STOW-RS client); ``via`` names the caller behind an AE title.
    source: str
    via: str | None = None
    accession_number: str | None = None
    reading_by: str | None = None  # a radiologist reading it now (a live claim)
    reading_until: datetime | None = None
    model_version: str = ""

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("created_at", "waited", "reading_until")}
        out["created_at"] = self.created_at.isoformat()
        out["waited_minutes"] = int(self.waited.total_seconds() // 60)
        out["reading_until"] = self.reading_until.isoformat() if self.reading_until else None
        return out


def entry(record: dict, at: datetime, policy: UrgencyPolicy) -> WorklistEntry:
    urgency, driver = policy.urgency(record["probabilities"])
    waited = max(timedelta(0), at - record["created_at"])
    reading = record.get("reading") or {}
    sender = (record.get("dicom") or {}).get("sending_application_entity_title")
    live = reading.get("until") is not None and reading["until"] > at
    return WorklistEntry(
        prediction_id=record["_id"],
        patient_id=record["patient_id"],
        created_at=record["created_at"],
        top_label=record["top_label"],
        confidence=record["confidence"],
        low_confidence=bool(record.get("low_confidence")),
        urgency=round(urgency, 6),
        driver=driver,
        driver_probability=float(record["probabilities"].get(driver, 0.0)) if driver else 0.0,
        band=policy.band(urgency),
        escalated=waited > policy.max_wait,
        waited=waited,
        source=sender or record.get("created_by", ""),
        via=record.get("created_by") if sender else None,
        accession_number=(record.get("dicom") or {}).get("accession_number"),
        reading_by=reading.get("by") if live else None,
        reading_until=reading.get("until") if live else None,
        model_version=(record.get("model") or {}).get("version", ""),
    )


def sort_key(item: WorklistEntry) -> tuple:
    if item.escalated:  # longest wait first
        return (0, item.created_at.timestamp(), 0.0, item.prediction_id)
    return (1, -item.urgency, item.created_at.timestamp(), item.prediction_id)


def order(records: list[dict], at: datetime, policy: UrgencyPolicy, band: str | None = None) -> list[WorklistEntry]:
    """The records as a worklist at time ``at``, in reading order; only ``band`` when given."""
    entries = sorted((entry(r, at, policy) for r in records), key=sort_key)
    return [e for e in entries if band is None or e.band == band]
