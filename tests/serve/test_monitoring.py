"""The Grafana dashboard and the alert rules only name series this app really exports."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import yaml

from tests.helpers import png_bytes
from tests.serve.helpers import chest_png

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s" / "base"
SERIES = re.compile(r"\b(ray_[a-z0-9_]+)\b(?!\s*=)")  # a name, not a label matcher (ray_io_cluster=~...)
# Exported only by a replica whose model card has a drift reference and whose window holds
# CXR_DRIFT_MIN_WINDOW images; the suite's tiny checkpoint has no reference. Its values are tested in
# tests/cxr_model/test_drift.py and tests/training/test_drift_real_images.py; here it must at least be
# a metric the app declares.
NEEDS_DRIFT_REFERENCE = {"ray_cxr_drift_psi"}
# Ray's GPU node metrics exist only on nodes with GPUs (none here): each must be a metric Ray's
# reporter declares.
GPU_ONLY = {"ray_node_gpus_utilization", "ray_node_gram_used", "ray_node_gram_available"}


def queried_series() -> dict[str, set[str]]:
    dashboard = json.loads((K8S / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())
    exprs = {
        "dashboard": [t["expr"] for p in dashboard["panels"] for t in p["targets"]],
        "alerts": [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]],
    }
    grouping = re.compile(r"\b(by|without|on|ignoring)\s*\([^)]*\)")  # label names, not series
    return {
        where: {name for e in found for name in SERIES.findall(grouping.sub("", e))} for where, found in exprs.items()
    }


def exported_series(text: str) -> set[str]:
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_dashboard_and_alerts_query_only_exported_series(service, mongo_server, ray_metrics_url):
    wanted = queried_series()
    assert len(wanted["dashboard"]) >= 10 and len(wanted["alerts"]) >= 4
    # Traffic that makes every series exist: predictions, rejections (one out of scope), a 404, a failed save.
    for i in range(3):
        assert service.predict(chest_png(300 + i), save="1").status_code == 200
    service.predict(b"not an image")
    service.predict(png_bytes(np.full((64, 64), 128, np.uint8)))  # blank: out of scope
    service.http.get("/api/v1/predictions/no-such-id")
    mongo_server.stop()
    try:
        assert service.predict(chest_png(310), save="1", request_id=uuid.uuid4().hex).json()["saved"] is False
    finally:
        mongo_server.start()
    declared = (ROOT / "serve" / "metrics.py").read_text()
    assert all(f'"{name.removeprefix("ray_")}"' in declared for name in NEEDS_DRIFT_REFERENCE)
    import ray.dashboard.modules.reporter.reporter_agent as reporter

    reporter_source = Path(reporter.__file__).read_text()
    assert all(f'"{name.removeprefix("ray_")}"' in reporter_source for name in GPU_ONLY)
    needed = (wanted["dashboard"] | wanted["alerts"]) - NEEDS_DRIFT_REFERENCE - GPU_ONLY
    deadline, exported = time.monotonic() + 60, set()
    while time.monotonic() < deadline:
        exported = exported_series(httpx.get(ray_metrics_url, timeout=10).text)
        if needed <= exported:
            break
        time.sleep(2)
    assert not needed - exported, sorted(needed - exported)
