"""Every alert has its runbook: a section of k8s/RUNBOOK.md with meaning, first checks, remedies and
rollback, which the alert's ``runbook_url`` names."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.k8s.conftest import K8S

RULES = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
ALERTS = [rule for group in RULES["spec"]["groups"] for rule in group["rules"] if "alert" in rule]
RUNBOOK = (K8S / "RUNBOOK.md").read_text()


def section(name: str) -> str:
    match = re.search(rf"^## {name}\n(.*?)(?=^## |\Z)", RUNBOOK, re.MULTILINE | re.DOTALL)
    assert match, f"no section for {name} in k8s/RUNBOOK.md"
    return match.group(1)


@pytest.mark.parametrize("rule", ALERTS, ids=[r["alert"] for r in ALERTS])
def test_each_alert_has_a_runbook_section_that_its_url_names(rule):
    text = section(rule["alert"])
    for heading in ("**Meaning.**", "**First checks.**", "**Remedies.**", "**Rollback.**"):
        assert heading in text, f"{rule['alert']}: {heading}"
    assert rule["annotations"]["runbook_url"].endswith(f"k8s/RUNBOOK.md#{rule['alert'].lower()}")


def test_the_runbook_has_no_section_for_an_alert_that_does_not_exist():
    sections = set(re.findall(r"^## (CXR\w+)$", RUNBOOK, re.MULTILINE))
    assert sections == {rule["alert"] for rule in ALERTS}


def test_the_runbook_covers_the_production_database():
    text = RUNBOOK.split("## The production database (MongoDB)", 1)[1]
    for topic in ("replica set", "majority", "audit", "Backups", "Retention", "Indexes"):
        assert topic in text, topic
