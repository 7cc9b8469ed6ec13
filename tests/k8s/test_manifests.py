"""k8s/ validated offline: real CRD schemas, the Serve config and its placement, one image and Ray
version everywhere, the overlays' documents."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve.app import AppArgs
from serve.config_check import unknown_keys
from serve.placement import Node, unplaceable
from tests.helpers import skip_or_fail_in_ci
from tests.k8s.conftest import (
    K8S,
    OVERLAYS,
    ROOT,
    by_kind,
    kustomizations,
    pod_specs,
    render,
    render_fallback,
    render_kubectl,
)
from tests.k8s.manifests import DEPLOYMENTS, by_kind_group, serve_config, validator


def test_every_manifest_and_dashboard_parses():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        assert all(isinstance(d, (dict, list)) for d in yaml.safe_load_all(path.read_text()) if d), path
    dashboard = json.loads((K8S / "base" / "grafana-dashboard.json").read_text())
    assert dashboard["panels"] and all(p["targets"] for p in dashboard["panels"])


def test_overlays_render_the_same_with_kubectl_and_without():
    for name in OVERLAYS:
        for directory in kustomizations(name):
            real = render_kubectl(directory)
            if real is None:
                skip_or_fail_in_ci("kubectl is not installed; the fallback renderer is used alone")
            key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
            assert sorted(real, key=key) == sorted(render_fallback(directory), key=key), directory


@pytest.mark.parametrize("name", OVERLAYS)
def test_jobs_are_applied_on_purpose_never_with_the_serving_stack(name):
    serving, *jobs = (render(d) for d in kustomizations(name))
    assert not by_kind(serving, "RayJob")  # re-applying serving never starts (or restarts) a training run
    (service,) = by_kind(serving, "RayService")
    assert [doc["metadata"]["name"] for docs in jobs for doc in docs] == ["cxr-train", "cxr-score"]
    for (job,) in jobs:
        assert job["kind"] == "RayJob" and job["metadata"]["namespace"] == service["metadata"]["namespace"]
        # Its GPU cluster goes soon after the job ends; the results stay on the shared volume.
        assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] <= 600


@pytest.mark.parametrize("kind", ["RayService", "RayJob", "PodMonitor"])
def test_rendered_custom_resources_validate_against_the_real_crds(overlay, kind):
    name, docs = overlay
    if kind == "PodMonitor" and name == "cpu-dev":
        assert not by_kind(docs, kind)  # removed on purpose: dev clusters lack the operator
        return
    assert by_kind(docs, kind)
    for doc in by_kind(docs, kind):
        errors = sorted(validator(kind).iter_errors(doc), key=str)
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def test_the_ray_cluster_inside_a_rayservice_is_a_valid_raycluster_spec(overlay):
    _, docs = overlay
    (service,) = by_kind(docs, "RayService")
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "check"},
        "spec": service["spec"]["rayClusterConfig"],
    }
    assert not list(validator("RayCluster").iter_errors(cluster))


@pytest.mark.parametrize(
    "where,kind",
    [
        (("spec", "colour"), "RayService"),
        (("spec", "rayClusterConfig", "headGroupSpec", "rayStartParam"), "RayService"),
        (
            (
                "spec",
                "rayClusterConfig",
                "workerGroupSpecs",
                0,
                "template",
                "spec",
                "containers",
                0,
                "imagePullPolicyy",
            ),
            "RayService",
        ),
        (("spec", "shutdownAfterJobFinish"), "RayJob"),
        (("spec", "podMetricsEndpoint"), "PodMonitor"),
    ],
)
def test_unknown_fields_fail_validation(overlay, where, kind):
    name, docs = overlay
    found = by_kind(docs, kind)
    if not found:
        pytest.skip(f"no {kind} in {name}")
    doc = json.loads(json.dumps(found[0]))
    node = doc
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = "x"
    assert list(validator(kind).iter_errors(doc)), f"{'.'.join(map(str, where))} was accepted"


def test_serve_config_v2_is_a_valid_serve_config_for_our_app(overlay):
    name, docs = overlay
    (service,) = by_kind(docs, "RayService")
    config = serve_config(service)
    assert unknown_keys(config) == []  # Serve itself would silently ignore a misspelt key
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "serve.app:build_app"
    AppArgs(**app.args)
    assert {d.name for d in app.deployments} == DEPLOYMENTS
    assert schema.http_options.host == "0.0.0.0" and schema.http_options.port == 8000
    classifier = next(d for d in app.deployments if d.name == "BatchedClassifier")
    gpus = classifier.ray_actor_options.num_gpus
    assert gpus == (1 if name == "gpu" else 0)
    assert bool(by_kind_group(service, "gpu")) == (gpus > 0)
    # Ingress and storage ask for the CPU group's custom resource, which that group offers.
    cpu_group = by_kind_group(service, "cpu")
    for deployment in app.deployments:
        if deployment.name != "BatchedClassifier":
            assert set(deployment.ray_actor_options.resources) <= set(cpu_group["resources"])


def quantity(value) -> float:
    """A Kubernetes CPU/GPU quantity ("2", "500m", 4) as a number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_nodes(cluster: dict) -> list[Node]:
    """Every node the cluster may grow to (worker groups at maxReplicas), with the logical resources
    KubeRay gives each: rayStartParams first, else the container's limits, plus the group's resources."""
    groups = [(cluster["headGroupSpec"], 1)] + [(g, g["maxReplicas"]) for g in cluster["workerGroupSpecs"]]
    nodes = []
    for group, count in groups:
        params = group.get("rayStartParams") or {}
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        free = {
            "CPU": quantity(params.get("num-cpus", limits.get("cpu", 0))),
            "GPU": quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
            **{k: quantity(v) for k, v in (group.get("resources") or {}).items()},
        }
        nodes += [Node(group.get("groupName", "head"), dict(free)) for _ in range(count)]
    return nodes


def test_every_replica_the_serve_config_may_ask_for_can_be_placed(overlay):
    """At every deployment's maximum, each replica fits some node of the fully grown cluster."""
    name, docs = overlay
    (service,) = by_kind(docs, "RayService")
    assert unplaceable(serve_config(service), ray_nodes(service["spec"]["rayClusterConfig"])) == []


def test_placement_check_sees_a_gpu_group_too_small():
    docs = render_fallback(K8S / "overlays" / "gpu")
    (service,) = by_kind(docs, "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    gpu_group = by_kind_group(service, "gpu")
    gpu_group["maxReplicas"] = 1  # the classifier autoscales to more GPU replicas than the group has nodes
    assert "BatchedClassifier" in unplaceable(serve_config(service), ray_nodes(cluster))


def test_serve_config_blocks_are_generated_from_the_root_serve_config():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "kube_serve_config.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ray_versions_and_images_agree(overlay):
    name, docs = overlay
    base_tag = re.search(r"ARG RAY_IMAGE=rayproject/ray:([\d.]+)-", (K8S / "Dockerfile").read_text()).group(1)
    assert base_tag == ray.__version__
    images = set()
    for doc in by_kind(docs, "RayService") + by_kind(docs, "RayJob"):
        spec = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
        assert spec["rayVersion"] == ray.__version__
        images |= {c["image"] for pod in pod_specs(doc) for c in pod["containers"]}  # submitters too
    assert len(images) == 1, images  # serving, training and scoring run one image
    if name == "gpu":
        assert images.pop().startswith("registry.example.org/cxr-serve:")


def test_overlays_have_a_readme_with_purpose_usage_and_warnings():
    for name in OVERLAYS:
        text = (K8S / "overlays" / name / "README.md").read_text()
        for heading in ("**Purpose.**", "**Use.**", "**Do not.**"):
            assert heading in text, f"{name}: {heading}"


def test_the_incremental_upgrade_patch_yields_a_valid_rayservice():
    """The documented gradual path (NewClusterWithIncrementalUpgrade) is valid against the real CRD."""
    import jsonpatch

    (service,) = by_kind(render(K8S / "overlays" / "gpu"), "RayService")
    patch = yaml.safe_load((K8S / "overlays" / "gpu" / "incremental-upgrade-patch.yaml").read_text())
    upgraded = jsonpatch.JsonPatch(patch).apply(service)
    assert upgraded["spec"]["upgradeStrategy"]["type"] == "NewClusterWithIncrementalUpgrade"
    errors = sorted(validator("RayService").iter_errors(upgraded), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])
