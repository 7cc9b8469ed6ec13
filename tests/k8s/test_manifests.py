"""k8s/ validated offline: real CRD schemas, the Serve config, the image, the training command."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
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
    crd_schema,
    kustomizations,
    pod_specs,
    render,
    render_fallback,
    render_kubectl,
    shared_file,
    writable_paths,
)
from training.config import add_train_arguments

CRDS = {
    "RayService": "kuberay-crds/ray.io_rayservices.yaml",
    "RayJob": "kuberay-crds/ray.io_rayjobs.yaml",
    "RayCluster": "kuberay-crds/ray.io_rayclusters.yaml",
    "PodMonitor": "prometheus-crds/monitoring.coreos.com_podmonitors.yaml",
}
DEPLOYMENTS = {"BatchedClassifier", "ResultStore", "Ingress"}


def validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema(shared_file(CRDS[kind])))


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


def serve_config(service: dict) -> dict:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


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


def by_kind_group(service: dict, group: str) -> dict | None:
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return next((g for g in groups if g["groupName"] == group), None)


def test_serve_config_blocks_are_generated_from_the_root_serve_config():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "kube_serve_config.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def containers(doc: dict) -> list[dict]:
    spec = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


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


def test_serving_cluster_shape_probes_shutdown_and_secrets(overlay):
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
    assert_secrets_only_where_read(name, service)
    assert "mongodb://" not in json.dumps(docs) and "mongodb+srv://" not in json.dumps(docs)


def assert_secrets_only_where_read(name: str, service: dict) -> None:
    """Secrets reach only the cpu group, the one node kind whose replicas read them (Ingress and
    ResultStore ask for its cxr_cpu_node resource); the head and the GPU nodes carry none."""
    cluster = service["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]} | {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    for group_name, group in groups.items():
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        secret_env = {n for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
        assert not container.get("envFrom"), group_name
        if group_name != "cpu":
            assert not secret_env, (group_name, secret_env)
        elif name == "gpu":
            assert secret_env == {"CXR_MONGODB_URI", "CXR_SESSION_SECRET", "CXR_PSEUDONYM_KEY"}
            assert env["CXR_MONGODB_URI"]["valueFrom"]["secretKeyRef"] == {"name": "cxr-mongodb", "key": "uri"}
        else:
            assert not secret_env  # the embedded database, keys drawn at deploy time
        # Every node may build the app, so the plain settings are the same everywhere.
        assert {n: e.get("value") for n, e in env.items() if n not in secret_env} == {
            "CXR_MONGODB_DATABASE": "cxr",
            "CXR_AUTH": "api_key",
        }, group_name
    readers = [d for d in serve_config(service)["applications"][0]["deployments"] if d["name"] != "BatchedClassifier"]
    assert all("cxr_cpu_node" in d["ray_actor_options"]["resources"] for d in readers)
    assert "cxr_cpu_node" in groups["cpu"]["resources"]


def test_training_job_runs_cxr_train_with_flags_it_accepts(overlay):
    name, docs = overlay
    (job,) = [d for d in by_kind(docs, "RayJob") if d["metadata"]["name"] == "cxr-train"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    commands = [shlex.split(part) for part in job["spec"]["entrypoint"].split("&&")]
    train = next(c for c in commands if c[:2] == ["cxr", "train"])
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_train_arguments(parser)
    args = parser.parse_args(train[2:])
    assert args.output_dir.startswith("/mnt/cxr/")  # the shared volume every pod mounts
    if name == "gpu":  # then the floors, and the copy to the models volume on success
        from training.promote import register_promote

        subparsers = argparse.ArgumentParser().add_subparsers()
        register_promote(subparsers)
        promote = next(c for c in commands if "promote" in c)
        promote = promote[promote.index("cxr") : promote.index("||")]  # a refusal does not fail the job
        promoted = subparsers.choices["promote"].parse_args(promote[2:])
        assert promoted.checkpoint == Path(args.output_dir) / "checkpoint" and promoted.serve_config is None
        assert str(promoted.models_dir).startswith("/mnt/cxr/")
    mounts = {m["mountPath"] for c in containers(job) for m in c.get("volumeMounts", [])}
    assert "/mnt/cxr" in mounts
    (claim,) = by_kind(docs, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "cxr-data"


def test_overlays_have_a_readme_with_purpose_usage_and_warnings():
    for name in OVERLAYS:
        text = (K8S / "overlays" / name / "README.md").read_text()
        for heading in ("**Purpose.**", "**Use.**", "**Do not.**"):
            assert heading in text, f"{name}: {heading}"


def test_the_archive_scoring_job_runs_cxr_score_as_placed(overlay):
    from scoring.cli import get_args_parser

    name, docs = overlay
    (job,) = [d for d in by_kind(docs, "RayJob") if d["metadata"]["name"] == "cxr-score"]
    spec = job["spec"]
    command = shlex.split(spec["entrypoint"])
    assert command[:2] == ["cxr", "score"]
    args = get_args_parser().parse_args(command[2:])
    assert all(p.startswith("/mnt/cxr/") for p in (args.input, args.checkpoint, args.output))
    # Every actor fits a worker: one GPU each in production, and its CPUs within the pod's.
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
    assert args.gpu == (name == "gpu") and (not args.gpu or args.actors <= group["maxReplicas"] * gpus)
    assert args.cpus_per_actor <= float(container["resources"]["limits"]["cpu"])
    for pod in containers(job):
        assert "/mnt/cxr" in {m["mountPath"] for m in pod.get("volumeMounts", [])}
        env = {e["name"]: e for e in pod.get("env", [])}
        if args.save:  # into the service's MongoDB; cpu-dev has none outside the app's own pod
            assert env["CXR_MONGODB_URI"]["valueFrom"]["secretKeyRef"] == {"name": "cxr-mongodb", "key": "uri"}
        else:
            assert "CXR_MONGODB_URI" not in env
    assert args.save == (name == "gpu")


def test_the_dicom_gateway_runs_cxr_gateway_with_its_own_spool_and_key(overlay, monkeypatch):
    from gateway.cli import add_gateway_arguments
    from gateway.delivery import Destination

    _, docs = overlay
    (gateway,) = [d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"] == "cxr-gateway"]
    (service,) = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "cxr-gateway"]
    (config,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "cxr-gateway"]
    (rayservice,) = by_kind(docs, "RayService")
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:2] == ["cxr", "gateway"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_gateway_arguments(parser)
    args = parser.parse_args(container["command"][2:])
    assert args.service_url == f"http://{rayservice['metadata']['name']}-serve-svc:8000"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert args.spool in mounts and {t["metadata"]["name"] for t in gateway["spec"]["volumeClaimTemplates"]} == {
        mounts[args.spool]["name"]
    }  # every pod its own durable spool
    key_mount = str(Path(args.api_key_file).parent)
    assert mounts[key_mount]["readOnly"] is True
    assert any(v["name"] == mounts[key_mount]["name"] and "secret" in v for v in pod["volumes"])
    settings = config["data"]
    from gateway.settings import GatewaySettings

    for name, value in settings.items():  # every key is a setting (a misspelt one would be ignored)
        assert name.removeprefix("CXR_GATEWAY_").lower() in GatewaySettings.model_fields, name
        monkeypatch.setenv(name, value)
    loaded = GatewaySettings()  # and every value parses, as the pod reads it
    assert loaded.send_to == json.loads(settings["CXR_GATEWAY_SEND_TO"])
    assert loaded.stow_to == json.loads(settings["CXR_GATEWAY_STOW_TO"])
    assert json.loads(settings["CXR_GATEWAY_ALLOW_AE"])  # never an open gateway
    assert all(Destination.parse(d) for d in json.loads(settings["CXR_GATEWAY_SEND_TO"]))
    assert int(settings["CXR_GATEWAY_MAX_SPOOL_BYTES"]) < 20 * 1024**3  # below the volume's size
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["port"] == args.port and container_ports["dicom"] == args.port
    assert container_ports["metrics"] == args.metrics_port > 0
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"].items()
    for monitor in by_kind(docs, "PodMonitor"):  # where the overlay has one (not cpu-dev), it scrapes the gateway
        assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels
        assert "metrics" in {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    assert service["spec"]["selector"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "CXR_MONGODB_URI" not in json.dumps(gateway)  # the gateway reaches the service, not the database


def test_the_incremental_upgrade_patch_yields_a_valid_rayservice():
    """The documented gradual path (NewClusterWithIncrementalUpgrade) is valid against the real CRD."""
    import jsonpatch

    (service,) = by_kind(render(K8S / "overlays" / "gpu"), "RayService")
    patch = yaml.safe_load((K8S / "overlays" / "gpu" / "incremental-upgrade-patch.yaml").read_text())
    upgraded = jsonpatch.JsonPatch(patch).apply(service)
    assert upgraded["spec"]["upgradeStrategy"]["type"] == "NewClusterWithIncrementalUpgrade"
    errors = sorted(validator("RayService").iter_errors(upgraded), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


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


def assert_restricted(name: str, pods: list[dict]) -> None:
    """The restricted Pod Security level, container by container."""
    for pod in pods:
        for container in pod["containers"]:
            context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True, (name, container["name"])
            assert context.get("allowPrivilegeEscalation") is False, (name, container["name"])
            assert context.get("capabilities", {}).get("drop") == ["ALL"], (name, container["name"])
            assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", (name, container["name"])
        for volume in pod.get("volumes", []):  # restricted allows only these volume types
            assert set(volume) - {"name"} <= {"persistentVolumeClaim", "emptyDir", "secret", "configMap"}, volume
        # At pod level too, so containers KubeRay adds (the autoscaler sidecar) inherit it; a pod that
        # writes a claimed volume owns it through fsGroup, without a recursive chown at every start.
        own = pod.get("securityContext", {})
        assert own.get("runAsNonRoot") is True and own.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])]
        # A claim: a persistentVolumeClaim volume, or a mount with no pod volume (a StatefulSet's template).
        not_claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" not in v}
        if any(m["name"] not in not_claims and not m.get("readOnly") for m in mounts):
            assert own.get("fsGroup") == 1000 and own.get("fsGroupChangePolicy") == "OnRootMismatch", name


def test_every_pod_meets_the_restricted_pod_security_level_and_ray_requires_its_token(overlay):
    name, docs = overlay
    (namespace,) = by_kind(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = [pod for doc in docs for pod in pod_specs(doc)]
    assert len(pods) >= 4
    assert_restricted(name, pods)
    for doc in by_kind(docs, "RayService") + by_kind(docs, "RayJob"):
        spec = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
        assert spec["authOptions"]["mode"] == "token", doc["metadata"]["name"]
        # The autoscaler sidecar KubeRay adds to the head pod: restricted too, or the pod is refused.
        if spec.get("enableInTreeAutoscaling"):
            context = spec["autoscalerOptions"]["securityContext"]
            assert context["runAsNonRoot"] and context["allowPrivilegeEscalation"] is False, doc["metadata"]["name"]
            assert context["capabilities"]["drop"] == ["ALL"] and context["seccompProfile"]["type"] == "RuntimeDefault"
    # Serving pods: a read-only root, /tmp the one writable place (tests/k8s/test_read_only_root.py).
    for service in by_kind(docs, "RayService"):
        for pod in pod_specs(service):
            (container,) = pod["containers"]
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
            assert "/tmp" in writable_paths(pod, container), container["name"]


def test_only_the_autoscaling_head_holds_a_service_account_token(overlay):
    """A pod that never calls the Kubernetes API gets no token: one stolen from a compromised app,
    training or gateway pod opens nothing. Only KubeRay's autoscaler sidecar (in the serving head)
    scales worker groups through the API, so only that pod keeps it."""
    _, docs = overlay
    holders = []
    for doc in docs:
        for pod in pod_specs(doc):
            if pod.get("automountServiceAccountToken", True):
                holders.append((doc["kind"], [c["name"] for c in pod["containers"]]))
    (service,) = by_kind(docs, "RayService")
    assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert holders == [("RayService", ["ray-head"])], holders


def test_the_production_ingress_serves_the_app_over_tls_with_room_for_uploads():
    from serve.settings import ServeSettings

    docs = render(K8S / "overlays" / "gpu")
    (ingress,) = by_kind(docs, "Ingress")
    (service,) = by_kind(docs, "RayService")
    spec = ingress["spec"]
    hosts = {h for t in spec["tls"] for h in t["hosts"]}
    assert hosts and all(rule["host"] in hosts for rule in spec["rules"])  # no plain-HTTP host
    (path,) = [p for rule in spec["rules"] for p in rule["http"]["paths"]]
    assert path["backend"]["service"] == {"name": f"{service['metadata']['name']}-serve-svc", "port": {"number": 8000}}
    body = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body.rstrip("m")) * 1024 * 1024 > ServeSettings().max_batch_bytes  # a STOW-RS batch fits
    timeout = int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert timeout > ServeSettings().request_timeout_s


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
