"""Availability on paper: the serving cluster's shape, probes and shutdown, replicas and budgets
spread over machines (a GCS outage survived live: tests/serve/test_high_availability.py), the dev
overlay on one machine."""

from __future__ import annotations

from tests.k8s.conftest import K8S, by_kind, pod_specs, render
from tests.k8s.manifests import by_kind_group, serve_config


def test_serving_cluster_shape_probes_and_shutdown(overlay):
    name, docs = overlay
    (service,) = by_kind(docs, "RayService")
    spec = service["spec"]
    cluster = spec["rayClusterConfig"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    graceful = max(
        d.get("graceful_shutdown_timeout_s", 20) for d in serve_config(service)["applications"][0]["deployments"]
    )
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        pod = group["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > graceful + 30  # worst batch + drain
        (container,) = pod["containers"]
        # KubeRay's intent: liveness is the node (raylet), never the app; readiness adds the Serve proxy.
        live = " ".join(container["livenessProbe"]["exec"]["command"])
        ready = " ".join(container["readinessProbe"]["exec"]["command"])
        assert "localhost:52365/api/local_raylet_healthz" in live and ":8000" not in live
        assert "localhost:52365/api/local_raylet_healthz" in ready and "localhost:8000/-/healthz" in ready
        assert "/healthz" not in live.replace("local_raylet_healthz", "") and "/readyz" not in ready
    gpu = by_kind_group(service, "gpu")
    if gpu:
        (container,) = gpu["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert any(t["key"] == "nvidia.com/gpu" for t in gpu["template"]["spec"]["tolerations"])


def test_production_is_highly_available_on_paper():
    """GCS fault tolerance on Redis (password from a Secret), two of every serving replica on
    different nodes, worker groups of two, and a disruption budget for every group and the gateway.
    (That a GCS outage is survived in practice is not tested here: see the README's operations part.)"""
    docs = render(K8S / "overlays" / "gpu")
    (service,) = by_kind(docs, "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    ft = cluster["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] and ft["redisPassword"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    deployments = {d["name"]: d for d in serve_config(service)["applications"][0]["deployments"]}
    assert deployments["BatchedClassifier"]["autoscaling_config"]["min_replicas"] >= 2
    assert deployments["Ingress"]["autoscaling_config"]["min_replicas"] >= 2
    assert deployments["ResultStore"]["num_replicas"] >= 2
    assert all(deployments[name]["max_replicas_per_node"] == 1 for name in deployments)
    templates = {}
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] >= 2, group["groupName"]
        templates[group["groupName"]] = group["template"]["metadata"]["labels"]
    (gateway,) = [d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"] == "cxr-gateway"]
    templates["gateway"] = gateway["spec"]["template"]["metadata"]["labels"]
    budgets = by_kind(docs, "PodDisruptionBudget")
    for name, labels in templates.items():
        matching = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1 and matching[0]["spec"]["maxUnavailable"] == 1, name
        assert matching[0]["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", name  # drains not blocked
    # Two Ray nodes (pods) on one machine would be one failure: each group spreads over machines
    # (required where nodes are plentiful: CPU workers, gateways; preferred for scarce GPU nodes).
    pods = {group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]} | {
        "gateway": gateway["spec"]["template"]
    }
    required = {"cpu": "DoNotSchedule", "gateway": "DoNotSchedule", "gpu": "ScheduleAnyway"}
    for name, template in pods.items():
        spread = {c["topologyKey"]: c for c in template["spec"]["topologySpreadConstraints"]}
        for constraint in spread.values():  # it counts this group's own pods
            assert constraint["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == required[name], name
        assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway", name


def test_the_dev_overlay_places_every_pod_on_one_machine():
    """cpu-dev runs on kind or minikube: no spreading rule may leave a pod pending there."""
    docs = render(K8S / "overlays" / "cpu-dev")
    for doc in docs:
        for pod in pod_specs(doc):
            for constraint in pod.get("topologySpreadConstraints", []):
                assert constraint["whenUnsatisfiable"] == "ScheduleAnyway", doc["metadata"]["name"]
            assert "affinity" not in pod
