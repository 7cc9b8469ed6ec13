"""The drift alert (k8s/base/prometheusrule.yaml, group cxr-drift) under `promtool test rules`."""

from __future__ import annotations

from tests.k8s.promtool import (
    DRIFT_ALERT,
    expected_drift_alert,
    psi_series,
    rule_groups,
    run_promtool,
    run_rule_tests,
    write_rule_file,
)


def test_every_alert_group_passes_promtool_check(tmp_path):
    result = run_promtool("check", "rules", str(write_rule_file(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cxr-drift" in {g["name"] for g in rule_groups()}


def test_drift_alert_fires_after_30_minutes_above_the_threshold_and_not_before(tmp_path):
    above = [psi_series("confidence", "0.4x60")]
    result = run_rule_tests(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": above,
                "alert_rule_test": [
                    {"eval_time": "25m", "alertname": DRIFT_ALERT, "exp_alerts": []},  # pending, not firing
                    {
                        "eval_time": "45m",
                        "alertname": DRIFT_ALERT,
                        "exp_alerts": [expected_drift_alert("confidence", 0.4)],
                    },
                ],
            }
        ],
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_drift_alert_stays_quiet_below_the_threshold_or_for_too_short_a_time(tmp_path):
    below = [psi_series("top_label", "0.2x60")]  # a moderate shift (0.1-0.25): watched on the dashboard only
    short = [psi_series("scope_distance", "0.6x19 0.05x40")]  # 20 minutes above, then back
    at_threshold = [psi_series("confidence", "0.25x60")]  # "above 0.25" is strict
    result = run_rule_tests(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": "50m", "alertname": DRIFT_ALERT, "exp_alerts": []}],
            }
            for series in (below, short, at_threshold, [])
        ],
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_drift_alert_takes_the_worst_replica_and_names_each_feature_and_model_version(tmp_path):
    series = [
        psi_series("confidence", "0.05x60", replica="r1"),
        psi_series("confidence", "0.5x60", replica="r2"),  # replicas see different traffic: the worst counts
        psi_series("scope_distance", "1.2x60", replica="r2"),
        psi_series("top_label", "0.3x60", replica="r1", version="v2"),
    ]
    firing = [
        expected_drift_alert("confidence", 0.5),
        expected_drift_alert("scope_distance", 1.2),
        expected_drift_alert("top_label", 0.3, version="v2"),
    ]
    result = run_rule_tests(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": "40m", "alertname": DRIFT_ALERT, "exp_alerts": firing}],
            }
        ],
    )
    assert result.returncode == 0, result.stdout + result.stderr
