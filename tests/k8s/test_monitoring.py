"""What Prometheus scrapes: every serving Ray pod and the gateway, never a job's pods, each series
labelled with its Ray cluster; the dashboard filters by cluster and namespace."""

from __future__ import annotations

import json
import re

import yaml

from tests.k8s.conftest import K8S, by_kind, kustomizations, render


def test_every_scraped_port_carries_the_cluster_and_the_dashboard_filters_by_it_and_namespace():
    """Two clusters report the same series during a blue/green upgrade: every series must say which,
    and the dashboard must let ops pick a namespace and a cluster."""
    (monitor,) = [d for d in yaml.safe_load_all((K8S / "base" / "podmonitor.yaml").read_text()) if d]
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        targets = {r["targetLabel"] for r in endpoint.get("relabelings", [])}
        assert "ray_io_cluster" in targets, endpoint["port"]
    dashboard = json.loads((K8S / "base" / "grafana-dashboard.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"namespace", "cluster"} <= variables
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for selector in re.findall(r"ray_[a-z0-9_]+(\{[^}]*\})?", target["expr"]):
                assert 'namespace=~"$namespace"' in selector and 'ray_io_cluster=~"$cluster"' in selector, target


def pod_templates(doc: dict) -> list[dict]:
    """The pod templates of a RayService, a RayJob (its submitter too) or a StatefulSet."""
    if doc["kind"] == "StatefulSet":
        return [doc["spec"]["template"]]
    spec = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
    templates = [g["template"] for g in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]]
    return templates + ([doc["spec"]["submitterPodTemplate"]] if doc["kind"] == "RayJob" else [])


def test_the_pod_monitor_scrapes_every_serving_pod_and_no_job_pod():
    """A training or scoring head is not the serving head: scraped as one, its end would look like
    the control plane going (CXRRayHeadDown) and its presence would hide the serving head's absence
    (CXRRayHeadAbsent); its series would mix into the serving dashboards."""
    docs = [doc for directory in kustomizations("gpu") for doc in render(directory)]
    (monitor,) = by_kind(docs, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    scraped = {}
    for doc in by_kind(docs, "RayService") + by_kind(docs, "RayJob") + by_kind(docs, "StatefulSet"):
        for template in pod_templates(doc):
            labels = template["metadata"]["labels"]
            scraped[(doc["metadata"]["name"], labels["app.kubernetes.io/component"])] = selector <= labels.items()
    assert scraped.pop(("cxr-serve", "ray-head")) and scraped.pop(("cxr-gateway", "dicom-gateway"))
    serving = [key for key in scraped if key[0] == "cxr-serve"]
    assert len(serving) == 2 and all(scraped.pop(key) for key in serving)  # the GPU and CPU workers
    assert len(scraped) == 6 and not any(scraped.values()), scraped  # each job's head, worker, submitter
