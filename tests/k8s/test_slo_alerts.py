"""The SLO burn-rate alerts under ``promtool test rules``: a fast burn pages within minutes, a brief
spike does not, a steady small burn opens a ticket but never pages, a healthy service stays quiet;
latency the same way; deliberate load shedding is named as such."""

from __future__ import annotations

import pytest

from tests.k8s.promtool import run_rule_tests

REQUESTS = 'ray_serve_num_http_requests_total{application="cxr",route="/api/v1/predictions"}'
ERRORS_500 = 'ray_serve_num_http_error_requests_total{application="cxr",route="/api/v1/predictions",error_code="500"}'
ERRORS_503 = 'ray_serve_num_http_error_requests_total{application="cxr",route="/api/v1/predictions",error_code="503"}'
LATENCY = 'ray_serve_http_request_latency_ms_{kind}{{application="cxr",route="/api/v1/predictions"{le}}}'


def counter(series: str, per_minute: float, minutes: int, start: float = 0) -> dict:
    return {"series": series, "values": f"{start:g}+{per_minute:g}x{minutes}"}


def errors_then(per_minute_spans: list[tuple[float, int]]) -> str:
    """A counter's values as promtool reads them: increments per minute, span by span."""
    parts, total = ["0"], 0.0
    for rate, minutes in per_minute_spans:
        parts.append(f"{total + rate:g}+{rate:g}x{minutes - 1}")
        total += rate * minutes
    return " ".join(parts)


def alerts_at(minutes: int, *names: str, firing: set[str] = frozenset()) -> list[dict]:
    return [
        {
            "eval_time": f"{minutes}m",
            "alertname": name,
            "exp_alerts": [] if name not in firing else [{"exp_labels": {}}],
        }
        for name in names
    ]


def check(tmp_path, series: list[dict], expectations: list[dict]) -> None:
    for case in expectations:  # labels and annotations: the rule's own, so only firing is tested here
        for alert in case["exp_alerts"]:
            alert["exp_labels"] = LABELS[case["alertname"]]
            alert["exp_annotations"] = ANNOTATIONS[case["alertname"]]
    result = run_rule_tests(tmp_path, [{"interval": "1m", "input_series": series, "alert_rule_test": expectations}])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _rules() -> dict:
    from tests.k8s.promtool import rule_groups

    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


RULES = _rules()
LABELS = {name: dict(rule.get("labels", {})) for name, rule in RULES.items()}
ANNOTATIONS = {name: dict(rule.get("annotations", {})) for name, rule in RULES.items()}
AVAILABILITY = ("CXRAvailabilityBudgetBurnFast", "CXRAvailabilityBudgetBurnSlow")
LATENCY_ALERTS = ("CXRLatencyBudgetBurnFast", "CXRLatencyBudgetBurnSlow")


def test_a_healthy_service_raises_no_alert(tmp_path):
    series = [counter(REQUESTS, 1000, 600), counter(ERRORS_500, 0.2, 600)]  # 0.02%: within 99.9%
    check(tmp_path, series, alerts_at(590, *AVAILABILITY, "CXRLoadShedding"))


def test_a_fast_burn_pages_within_the_hour_and_a_short_spike_does_not(tmp_path):
    clean = 400  # minutes of healthy history first: every window, up to 6 h, has seen normal traffic
    burning = [counter(REQUESTS, 1000, 520), {"series": ERRORS_500, "values": errors_then([(0, clean), (20, 120)])}]
    # 2% errors from then on: 20x the budget. Not yet after 20 minutes; paged once the 1 h window
    # is past 14.4x the budget (about 45 minutes in) and the 5 m window agrees.
    burn = alerts_at(clean + 20, AVAILABILITY[0]) + alerts_at(clean + 55, AVAILABILITY[0], firing={AVAILABILITY[0]})
    check(tmp_path, burning, burn)
    spike = [
        counter(REQUESTS, 1000, 520),
        {"series": ERRORS_500, "values": errors_then([(0, clean), (50, 5), (0, 115)])},
    ]
    # 5% for five minutes: bad while it lasts, but 0.4% of the hour: no page.
    check(tmp_path, spike, alerts_at(clean + 6, AVAILABILITY[0]) + alerts_at(clean + 30, AVAILABILITY[0]))


def test_a_steady_small_burn_opens_a_ticket_and_never_pages(tmp_path):
    minutes = 26 * 60
    series = [counter(REQUESTS, 1000, minutes), counter(ERRORS_500, 4, minutes)]  # 0.4%: 4x the budget
    check(tmp_path, series, alerts_at(minutes - 10, *AVAILABILITY, firing={AVAILABILITY[1]}))


def test_slow_predictions_burn_the_latency_budget(tmp_path):
    count = LATENCY.format(kind="count", le="")
    fast = LATENCY.format(kind="bucket", le=',le="2000"')
    clean = 400
    slow_share = [counter(count, 1000, 520), {"series": fast, "values": errors_then([(1000, clean), (800, 120)])}]
    # Then 20% of predictions take over 2 s: 20x a 1% budget.
    expectations = alerts_at(clean + 5, LATENCY_ALERTS[0])
    expectations += alerts_at(clean + 55, LATENCY_ALERTS[0], firing={LATENCY_ALERTS[0]})
    check(tmp_path, slow_share, expectations)
    # No predictions at all is no latency burn.
    check(tmp_path, [counter(count, 0, 120), counter(fast, 0, 120)], alerts_at(110, *LATENCY_ALERTS))


@pytest.mark.parametrize("shed_per_minute, fires", [(30, True), (5, False)])
def test_load_shedding_is_named_as_such(tmp_path, shed_per_minute, fires):
    series = [counter(REQUESTS, 1000, 60), counter(ERRORS_503, shed_per_minute, 60)]
    check(tmp_path, series, alerts_at(50, "CXRLoadShedding", firing={"CXRLoadShedding"} if fires else set()))
