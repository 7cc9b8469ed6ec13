"""Least privilege in the rendered overlays: the restricted Pod Security level, Ray's token, no
service-account token where the API is never called, secrets only where read, TLS at the edge."""

from __future__ import annotations

import json

from tests.k8s.conftest import K8S, by_kind, pod_specs, render, writable_paths
from tests.k8s.manifests import serve_config


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


def test_secrets_reach_only_the_pods_that_read_them(overlay):
    name, docs = overlay
    (service,) = by_kind(docs, "RayService")
    assert_secrets_only_where_read(name, service)
    assert "mongodb://" not in json.dumps(docs) and "mongodb+srv://" not in json.dumps(docs)


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
