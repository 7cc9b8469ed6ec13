"""The reading order, as a table: urgency bands from label weights, then escalation by wait, on a
fake clock (no service, no database)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from serve.worklist import UrgencyPolicy, order

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
POLICY = UrgencyPolicy(
    weights={"COVID-19": 3.0, "Lung Opacity": 2.0, "Viral Pneumonia": 2.0, "Normal": 0.0},
    urgent_at=1.5,
    soon_at=0.75,
    max_wait=timedelta(hours=4),
)


def record(name: str, minutes_ago: float, at: datetime = T0, **probabilities) -> dict:
    probabilities = probabilities or {"Normal": 0.97, "COVID-19": 0.01, "Lung Opacity": 0.01, "Viral Pneumonia": 0.01}
    top = max(probabilities, key=probabilities.get)
    return {
        "_id": name,
        "patient_id": f"P-{name}",
        "created_at": at - timedelta(minutes=minutes_ago),
        "probabilities": probabilities,
        "top_label": top,
        "confidence": probabilities[top],
        "created_by": "ward-7",
    }


def covid(p: float) -> dict:
    return {"COVID-19": p, "Normal": 1 - p}


@pytest.mark.parametrize(
    "probabilities, band, driver",
    [
        (covid(0.9), "urgent", "COVID-19"),  # 2.7
        (covid(0.5), "urgent", "COVID-19"),  # 1.5: the cut-off is inclusive
        (covid(0.3), "soon", "COVID-19"),  # 0.9
        ({"Lung Opacity": 0.8, "Normal": 0.2}, "urgent", "Lung Opacity"),  # 1.6
        ({"Viral Pneumonia": 0.4, "Normal": 0.6}, "soon", "Viral Pneumonia"),  # 0.8
        ({"Normal": 0.97, "COVID-19": 0.03}, "routine", "COVID-19"),  # 0.09: Normal weighs nothing
        ({"Effusion": 0.8, "Normal": 0.2}, "soon", "Effusion"),  # a label not configured weighs 1
    ],
)
def test_bands_follow_weight_times_probability(probabilities, band, driver):
    (entry,) = order([record("a", 5, **probabilities)], T0, POLICY)
    assert (entry.band, entry.driver) == (band, driver)


def test_urgency_first_then_the_oldest_within_equal_urgency():
    records = [
        record("routine-old", 200),
        record("soon", 10, **covid(0.3)),
        record("urgent-new", 1, **covid(0.9)),
        record("urgent-old", 30, **covid(0.9)),
        record("opacity", 5, **{"Lung Opacity": 0.8, "Normal": 0.2}),
    ]
    assert [e.prediction_id for e in order(records, T0, POLICY)] == [
        "urgent-old",  # 2.7, waited 30 min
        "urgent-new",  # 2.7, waited 1 min
        "opacity",  # 1.6
        "soon",  # 0.9
        "routine-old",
    ]


def test_a_study_waiting_past_the_limit_rises_to_the_top_and_the_longest_wait_leads():
    records = [record("urgent", 2, **covid(0.95)), record("routine-a", 200), record("routine-b", 230)]
    assert [e.prediction_id for e in order(records, T0, POLICY)][0] == "urgent"
    # Later on the same clock: routine-b has waited 4 h 01 min, routine-a 3 h 31 min.
    later = T0 + timedelta(minutes=11)
    ordered = order(records, later, POLICY)
    assert [e.prediction_id for e in ordered] == ["routine-b", "urgent", "routine-a"]
    assert [e.escalated for e in ordered] == [True, False, False] and ordered[0].band == "routine"
    # Both past the limit: the longer wait first, whatever the urgency.
    much_later = T0 + timedelta(hours=5)
    assert [e.prediction_id for e in order(records, much_later, POLICY)] == ["routine-b", "routine-a", "urgent"]


def test_without_escalation_a_steady_stream_of_urgent_studies_starves_a_routine_one():
    """Why the rule exists: a reader who takes the top of the list every 5 minutes while a new
    urgent study arrives every 5 minutes never reaches the routine study, unless it escalates."""

    def minutes_until_read(policy: UrgencyPolicy) -> float | None:
        waiting = [record("routine", 0, at=T0)]
        for step in range(1, 121):  # ten hours
            clock = T0 + timedelta(minutes=5 * step)
            waiting.append(record(f"urgent-{step}", 0, at=clock, **covid(0.9)))
            first = order(waiting, clock, policy)[0]
            waiting = [r for r in waiting if r["_id"] != first.prediction_id]
            if first.prediction_id == "routine":
                return 5 * step
        return None

    assert minutes_until_read(UrgencyPolicy(POLICY.weights, max_wait=timedelta(days=365))) is None
    read_after = minutes_until_read(POLICY)
    assert read_after is not None and 240 < read_after <= 250


def test_a_live_claim_shows_its_reader_and_a_lapsed_one_does_not():
    claimed = record("a", 10, **covid(0.9)) | {"reading": {"by": "dr-lee", "until": T0 + timedelta(minutes=5)}}
    lapsed = record("b", 10, **covid(0.9)) | {"reading": {"by": "dr-kim", "until": T0 - timedelta(minutes=1)}}
    entries = {e.prediction_id: e for e in order([claimed, lapsed], T0, POLICY)}
    assert entries["a"].reading_by == "dr-lee" and entries["b"].reading_by is None


def test_the_band_filter_keeps_the_order_and_low_confidence_is_flagged_not_reordered():
    records = [
        record("u1", 50, **covid(0.9)) | {"low_confidence": True},
        record("u2", 60, **covid(0.8)),
        record("r", 300),  # escalated, routine
    ]
    assert [e.prediction_id for e in order(records, T0, POLICY, band="urgent")] == ["u1", "u2"]
    entries = order(records, T0, POLICY)
    assert [e.prediction_id for e in entries] == ["r", "u1", "u2"] and entries[1].low_confidence
