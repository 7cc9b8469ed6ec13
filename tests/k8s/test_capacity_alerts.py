"""Capacity and control-plane alerts: the queue warning follows the configured queue bounds, and
``promtool test rules`` shows the head and GPU alerts fire when they should and only then."""

from __future__ import annotations

import re

import yaml

from tests.k8s.conftest import ROOT
from tests.k8s.promtool import alert_rule, run_rule_tests


def test_the_queue_warning_sits_at_80_percent_of_each_configured_bound():
    deployments = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["deployments"]
    bounds = {d["name"]: d["max_queued_requests"] for d in deployments if "max_queued_requests" in d}
    expr = alert_rule("CXRQueueBacklog")["expr"]
    thresholds = {name: int(value) for name, value in re.findall(r'deployment="(\w+)"\}\) > (\d+)', expr)}
    assert thresholds == {name: int(0.8 * bound) for name, bound in bounds.items()}


def series(name: str, labels: dict, values: str) -> dict:
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def expect(name: str, minutes: int, labels: dict | None) -> dict:
    rule = alert_rule(name)
    alerts = []
    if labels is not None:
        annotations = {
            k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), v)
            for k, v in rule["annotations"].items()
        }
        alerts = [{"exp_labels": labels | rule["labels"], "exp_annotations": annotations}]
    return {"eval_time": f"{minutes}m", "alertname": name, "exp_alerts": alerts}


def check(tmp_path, input_series: list[dict], expectations: list[dict]) -> None:
    result = run_rule_tests(
        tmp_path, [{"interval": "1m", "input_series": input_series, "alert_rule_test": expectations}]
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_a_head_that_stops_answering_pages_and_a_blip_does_not(tmp_path):
    head = {"job": "cxr", "namespace": "cxr", "ray_io_cluster": "cxr-serve-abc", "ray_node_type": "head"}
    down = [series("up", head, "1x10 0x10")]  # down from minute 11
    at = {"namespace": "cxr", "ray_io_cluster": "cxr-serve-abc"}
    check(tmp_path, down, [expect("CXRRayHeadDown", 12, None), expect("CXRRayHeadDown", 15, at)])
    blip = [series("up", head, "1x10 0 1x10")]  # one missed scrape
    check(tmp_path, blip, [expect("CXRRayHeadDown", 12, None), expect("CXRRayHeadDown", 15, None)])


def test_a_head_that_is_gone_pages_and_an_upgrade_does_not(tmp_path):
    """A deleted head pod leaves no `up` series (CXRRayHeadDown sees nothing); a blue/green upgrade
    scrapes the new head before the old one goes."""
    old = {"job": "cxr", "namespace": "cxr", "ray_io_cluster": "cxr-serve-abc", "ray_node_type": "head"}
    new = old | {"ray_io_cluster": "cxr-serve-def"}
    gone = [series("up", old, "1x5 stale")]  # no series from minute 6
    fired = {"ray_node_type": "head"}  # all absent() can say
    check(tmp_path, gone, [expect("CXRRayHeadAbsent", 9, None), expect("CXRRayHeadAbsent", 12, fired)])
    check(tmp_path, gone, [expect("CXRRayHeadDown", 12, None)])  # why the second alert exists
    upgrade = [series("up", old, "1x5 stale"), series("up", new, "_x3 1x20")]
    check(tmp_path, upgrade, [expect("CXRRayHeadAbsent", 12, None), expect("CXRRayHeadAbsent", 20, None)])
    down = [series("up", old, "0x20")]  # present but down: the other alert's case
    check(tmp_path, down, [expect("CXRRayHeadAbsent", 12, None)])


def test_gpu_memory_and_saturation_alerts(tmp_path):
    gpu = {"ip": "10.1.2.3", "GpuIndex": "0"}
    gib = 1024**3
    full = [
        series("ray_node_gram_used", gpu, f"{78 * gib}x40"),
        series("ray_node_gram_available", gpu, f"{1 * gib}x40"),
        series("ray_node_gpus_utilization", gpu, "99x40"),
    ]
    check(
        tmp_path,
        full,
        [
            expect("CXRGPUMemoryNearlyFull", 10, None),
            expect("CXRGPUMemoryNearlyFull", 20, gpu),
            expect("CXRGPUSaturated", 20, None),
            expect("CXRGPUSaturated", 35, {"ip": "10.1.2.3"}),
        ],
    )
    roomy = [
        series("ray_node_gram_used", gpu, f"{40 * gib}x40"),
        series("ray_node_gram_available", gpu, f"{40 * gib}x40"),
        series("ray_node_gpus_utilization", gpu, "60x40"),
    ]
    check(tmp_path, roomy, [expect("CXRGPUMemoryNearlyFull", 35, None), expect("CXRGPUSaturated", 35, None)])
