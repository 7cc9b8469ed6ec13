"""Least privilege in the rendered overlays: the restricted Pod Security level, Ray's token, no
service-account token where the API is never called, secrets only where read, TLS at the edge."""

from __future__ import annotations

import json

from tests.k8s.conftest import K8S, by_kind, pod_specs, render, writable_paths
from tests.k8s.manifests import secret_files, serve_config

# What the restricted level allows and these manifests use (it also allows csi, downwardAPI, ephemeral).
RESTRICTED_VOLUMES = {"persistentVolumeClaim", "emptyDir", "secret", "configMap", "projected"}


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
            assert set(volume) - {"name"} <= {
                "persistentVolumeClaim",
                "emptyDir",
                "secret",
                "configMap",
                "projected",
            }, volume
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


SECRET_FILES = {"CXR_MONGODB_URI": ("cxr-mongodb", "uri")} | {
    f"CXR_{key.replace('-', '_').upper()}": ("cxr-app-keys", key) for key in ("session-secret", "pseudonym-key")
}


def assert_secrets_only_where_read(name: str, service: dict) -> None:
    """Secrets reach only the cpu group, the one node kind whose replicas read them (Ingress and
    ResultStore ask for its cxr_cpu_node resource), as files in the folder CXR_SECRETS_DIR names
    (never variables, which every Ray worker process on the node would inherit); the head and the
    GPU nodes carry none."""
    cluster = service["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]} | {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    for group_name, group in groups.items():
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        assert not container.get("envFrom") and all("value" in e for e in env.values()), group_name
        # Every node may build the app, so the plain settings are the same everywhere.
        assert {n: e["value"] for n, e in env.items()} == {
            "CXR_MONGODB_DATABASE": "cxr",
            "CXR_AUTH": "api_key",
            "CXR_SECRETS_DIR": "/var/run/secrets/cxr",
        }, group_name
        files = secret_files(pod, container)
        if group_name == "cpu" and name == "gpu":
            assert files == {"/var/run/secrets/cxr": SECRET_FILES}, files
            defaults = [v["projected"]["defaultMode"] for v in pod["volumes"] if "projected" in v]
            assert defaults == [0o440] and pod["securityContext"]["fsGroup"] == 1000  # the ray user's group only
        else:  # cpu-dev: the embedded database, keys drawn at deploy time
            assert not files, (group_name, files)
    readers = [d for d in serve_config(service)["applications"][0]["deployments"] if d["name"] != "BatchedClassifier"]
    assert all("cxr_cpu_node" in d["ray_actor_options"]["resources"] for d in readers)
    assert "cxr_cpu_node" in groups["cpu"]["resources"]


def test_secrets_reach_only_the_pods_that_read_them(overlay):
    name, docs = overlay
    (service,) = by_kind(docs, "RayService")
    assert_secrets_only_where_read(name, service)
    assert "mongodb://" not in json.dumps(docs) and "mongodb+srv://" not in json.dumps(docs)
    for doc in docs:  # no pod of any workload takes a Secret as a variable (checkov CKV_K8S_35)
        for pod in pod_specs(doc):
            for container in pod["containers"]:
                refs = [e for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
                refs += [e for e in container.get("envFrom", []) if "secretRef" in e]
                assert not refs, (doc["metadata"]["name"], refs)


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
