"""Placement: every replica serve_config.yaml may ask for fits the cluster that runs it.

A replica that fits no node waits forever (UPSCALING, "total resources available: CPU 0.25"), a
silent throughput cap; this checks the arithmetic, then the real 2-CPU cluster itself.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from ray import serve

from serve.config_check import main as config_check
from serve.placement import Node, describe, most_replicas, unplaceable
from tests.serve.conftest import ROOT, deploy, deploy_config
from tests.serve.helpers import wait_until

SHIPPED = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
CLASSIFIER = "BatchedClassifier"


def deployment(config: dict, name: str) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


def test_max_replicas_per_node_caps_what_one_node_holds_however_large():
    config = {"applications": [{"deployments": [
        {"name": "Ingress", "autoscaling_config": {"max_replicas": 3}, "max_replicas_per_node": 1,
         "ray_actor_options": {"num_cpus": 0.5}},
    ]}]}  # fmt: skip
    assert unplaceable(config, [Node("big", {"CPU": 64})]) == ["Ingress", "Ingress"]
    assert unplaceable(config, [Node(f"n{i}", {"CPU": 1}) for i in range(3)]) == []


def test_the_shipped_config_fits_the_two_core_machine_at_its_most():
    assert most_replicas(deployment(SHIPPED, CLASSIFIER)) == 2
    assert unplaceable(SHIPPED, [Node("local", {"CPU": 2})]) == []


def test_the_config_that_capped_throughput_is_refused_and_named():
    """1 + 1 classifier CPUs + Ingress 0.5 + store 0.25 on 2 CPUs: the second replica never ran."""
    old = copy.deepcopy(SHIPPED)
    deployment(old, CLASSIFIER)["ray_actor_options"]["num_cpus"] = 1
    deployment(old, "Ingress")["ray_actor_options"]["num_cpus"] = 0.5
    assert unplaceable(old, [Node("local", {"CPU": 2})])  # which replica is left depends on start order
    assert "cannot be placed" in describe(old, [Node("local", {"CPU": 2})])
    assert "ask for 2.75 logical CPUs" in describe(old, [Node("local", {"CPU": 2})])


@pytest.mark.parametrize(
    "nodes, left",
    [
        ([Node("gpu", {"CPU": 4, "GPU": 1}), Node("cpu", {"CPU": 4})], []),
        ([Node("cpu", {"CPU": 8})], [CLASSIFIER, CLASSIFIER]),  # GPUs asked, none offered
        ([Node("gpu", {"CPU": 2, "GPU": 1})], ["Ingress", "ResultStore"]),  # one node, GPU replicas first
    ],
)
def test_gpus_and_whole_nodes_are_packed_per_node(nodes, left):
    config = copy.deepcopy(SHIPPED)
    deployment(config, CLASSIFIER)["ray_actor_options"] = {"num_cpus": 2, "num_gpus": 1}
    deployment(config, CLASSIFIER)["autoscaling_config"]["max_replicas"] = 2 if left == [CLASSIFIER] * 2 else 1
    assert sorted(unplaceable(config, nodes)) == sorted(left)


def test_config_check_refuses_a_cluster_too_small(tmp_path, capsys):
    assert config_check([str(ROOT / "serve_config.yaml"), "--cpus", "2"]) == 0
    assert config_check([str(ROOT / "serve_config.yaml"), "--cpus", "1.5"]) == 1
    assert "cannot be placed" in capsys.readouterr().err


def test_the_real_cluster_runs_every_replica_the_config_may_ask_for(service):
    """On the suite's 2-CPU cluster, the classifier pinned at its autoscaling maximum all runs."""
    config = deploy_config(service.checkpoint, service.port, service.env, {"batch_wait_timeout_s": 0.2})
    classifier = deployment(config, CLASSIFIER)
    classifier["num_replicas"] = most_replicas(classifier)
    del classifier["autoscaling_config"]

    def running() -> dict[str, int] | None:
        status = serve.status().applications["cxr"]
        counts = {name: d.replica_states.get("RUNNING", 0) for name, d in status.deployments.items()}
        healthy = status.status == "RUNNING" and all(d.status == "HEALTHY" for d in status.deployments.values())
        return counts if healthy else None

    try:
        deploy(config)
        counts = wait_until(running, 120, "every replica placed and healthy")
    finally:
        classifier["num_replicas"] = 1  # back to one replica first: autoscaling would keep both for minutes
        deploy(config)
        service.redeploy({"batch_wait_timeout_s": 0.2})
    assert counts == {CLASSIFIER: 2, "Ingress": 1, "ResultStore": 1}
