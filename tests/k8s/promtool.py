"""`promtool test rules` on the alerts of k8s/base/prometheusrule.yaml (Debian's `prometheus` package).

The PrometheusRule wraps plain Prometheus rule groups in ``spec``; they are written out as a rule file
in a temporary directory beside a generated test file, so a test states its input series and the alerts
it expects in Python, and the figures it feeds in may come from a real model (tests/training).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.helpers import skip_or_fail_in_ci

RULES = Path(__file__).resolve().parents[2] / "k8s" / "base" / "prometheusrule.yaml"
PSI_SERIES = "ray_cxr_drift_psi"
DRIFT_ALERT = "CXRInputDrift"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        skip_or_fail_in_ci("promtool is not installed (Debian: apt install prometheus)")
    return path


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["spec"]["groups"]


def alert_rule(name: str) -> dict:
    return next(r for g in rule_groups() for r in g["rules"] if r.get("alert") == name)


def write_rule_file(directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def run_rule_tests(directory: Path, tests: list[dict]) -> subprocess.CompletedProcess:
    """``promtool test rules`` on every group of the PrometheusRule, with ``tests`` as its test cases."""
    write_rule_file(directory)
    test_file = directory / "rules.test.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False)
    )
    return run_promtool("test", "rules", str(test_file))


def psi_series(feature: str, values: str, replica: str = "r1", version: str = "v1") -> dict:
    """One replica's PSI gauge as Ray exports it (Serve adds application, deployment and replica)."""
    labels = {
        "application": "cxr",
        "deployment": "BatchedClassifier",
        "replica": replica,
        "feature": feature,
        "model_version": version,
    }
    return {"series": PSI_SERIES + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def render(template: str, labels: dict, value: float) -> str:
    """The two template forms the alert's annotations use: ``{{ $labels.x }}`` and a printf'd ``$value``."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
    return re.sub(r'\{\{ \$value \| printf "([^"]+)" \}\}', lambda m: m.group(1) % value, text)


def expected_drift_alert(feature: str, value: float, version: str = "v1") -> dict:
    rule = alert_rule(DRIFT_ALERT)
    labels = {"feature": feature, "model_version": version, **rule["labels"]}
    return {
        "exp_labels": labels,
        "exp_annotations": {k: render(v, labels, value) for k, v in rule["annotations"].items()},
    }


def drift_alert_test(series: list[dict], at: str, firing: list[dict]) -> dict:
    """A test case: ``series`` fed in, the drift alerts ``firing`` at ``at`` (none: an empty list)."""
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": at, "alertname": DRIFT_ALERT, "exp_alerts": firing}],
    }
