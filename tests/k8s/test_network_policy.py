"""The NetworkPolicies, evaluated as Kubernetes does (policies add up; a selected pod refuses the
rest) for the callers an attacker inside the cluster would be: each Ray cluster's control plane
(serving, training, scoring) is closed to everything but that cluster's own Ray pods, the app port
open to the ingress controller and the gateway, metrics to monitoring, DICOM to the PACS network."""

from __future__ import annotations

import ipaddress

import pytest

from tests.k8s.conftest import by_kind, kustomizations, render

DOCS = [doc for directory in kustomizations("gpu") for doc in render(directory)]  # serving and both jobs
POLICIES = by_kind(DOCS, "NetworkPolicy")
NAMESPACE = "cxr"
RAY_NODE = {"ray.io/is-ray-node": "yes"}  # KubeRay labels every Ray pod so


def pod_labels(workload: str, component: str) -> dict:
    """A pod's labels as KubeRay or the StatefulSet controller gives them (workload: the resource)."""
    for doc in by_kind(DOCS, "RayService") + by_kind(DOCS, "RayJob"):
        if doc["metadata"]["name"] != workload:
            continue
        spec = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
        for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
            labels = group["template"]["metadata"]["labels"]
            if labels.get("app.kubernetes.io/component") == component:
                return labels | RAY_NODE
        if component == "ray-job-submitter":  # a Job's pod, not a Ray node
            return doc["spec"]["submitterPodTemplate"]["metadata"]["labels"] | {"batch.kubernetes.io/job-name": "x"}
    (gateway,) = [d for d in by_kind(DOCS, "StatefulSet") if d["metadata"]["name"] == workload]
    return gateway["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict, labels: dict) -> bool:
    exists = all(
        (e["key"] in labels) == (e["operator"] == "Exists") for e in selector.get("matchExpressions", [])
    )  # the two operators used here: Exists, DoesNotExist
    return exists and all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _from_matches(peer: dict, source: dict) -> bool:
    if "ipBlock" in peer:
        return source.get("ip") is not None and ipaddress.ip_address(source["ip"]) in ipaddress.ip_network(
            peer["ipBlock"]["cidr"]
        )
    namespace_ok = (
        _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": source.get("namespace", "")})
        if "namespaceSelector" in peer
        else source.get("namespace") == NAMESPACE
    )
    pod_ok = _selects(peer["podSelector"], source.get("labels", {})) if "podSelector" in peer else True
    return namespace_ok and pod_ok


def allowed(target: dict, port: int, source: dict) -> bool:
    selecting = [p for p in POLICIES if _selects(p["spec"]["podSelector"], target)]
    if not selecting:
        return True  # a pod no policy selects is open: the test below requires there is none
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            if not rule.get("from") or any(_from_matches(peer, source) for peer in rule["from"]):
                return True
    return False


HEAD, GPU, CPU = (pod_labels("cxr-serve", c) for c in ("ray-head", "ray-gpu-worker", "ray-cpu-worker"))
GATEWAY = pod_labels("cxr-gateway", "dicom-gateway")
JOBS = {  # each job's Ray pods, and the pod that submits it
    job: (pod_labels(job, "ray-head"), pod_labels(job, worker), pod_labels(job, "ray-job-submitter"))
    for job, worker in (("cxr-train", "ray-train-worker"), ("cxr-score", "ray-score-worker"))
}
ANOTHER_APP = {"namespace": NAMESPACE, "labels": {"app": "someone-elses"}}
OTHER_NAMESPACE = {"namespace": "team-b", "labels": {"app": "anything"}}
RAY_POD = {"namespace": NAMESPACE, "labels": GPU}
INGRESS = {"namespace": "ingress-nginx", "labels": {"app.kubernetes.io/name": "ingress-nginx"}}
MONITORING = {"namespace": "monitoring", "labels": {"app": "prometheus"}}
GATEWAY_POD = {"namespace": NAMESPACE, "labels": GATEWAY}


@pytest.mark.parametrize("port", [6379, 8265, 10001, 52365])
@pytest.mark.parametrize(
    "attacker", [ANOTHER_APP, OTHER_NAMESPACE, INGRESS, GATEWAY_POD], ids=["pod", "ns", "ingress", "gw"]
)
def test_the_ray_control_plane_is_closed_to_all_but_the_cluster_s_own_pods(port, attacker):
    assert not allowed(HEAD, port, attacker)
    assert allowed(HEAD, port, RAY_POD)


@pytest.mark.parametrize("target", [HEAD, GPU, CPU], ids=["head", "gpu", "cpu"])
def test_the_app_port_is_open_to_the_ingress_controller_and_the_gateway_only(target):
    assert allowed(target, 8000, INGRESS) and allowed(target, 8000, GATEWAY_POD)
    assert not allowed(target, 8000, ANOTHER_APP) and not allowed(target, 8000, OTHER_NAMESPACE)


def test_metrics_only_to_monitoring_and_dicom_only_from_the_pacs_network():
    for target, port in ((HEAD, 8080), (GPU, 8080), (HEAD, 44217), (GATEWAY, 9102)):
        assert allowed(target, port, MONITORING) and not allowed(target, port, ANOTHER_APP), (target, port)
    assert allowed(GATEWAY, 11112, {"ip": "10.20.4.7"})
    assert not allowed(GATEWAY, 11112, {"ip": "192.168.1.50"}) and not allowed(GATEWAY, 11112, ANOTHER_APP)
    assert not allowed(GATEWAY, 9102, INGRESS)


def test_kuberay_reaches_the_dashboard_api_and_the_proxy_health_check_and_nothing_else():
    operator = {"namespace": "kuberay-system", "labels": {"app.kubernetes.io/name": "kuberay-operator"}}
    assert allowed(HEAD, 8265, operator)
    assert not allowed(HEAD, 6379, operator) and not allowed(HEAD, 10001, operator)
    # The operator's GET http://<head IP>:8000/-/healthz decides whether the head joins the serve
    # Service (KubeRay's RayHttpProxyClient).
    assert allowed(HEAD, 8000, operator)
    for job_head, _, _ in JOBS.values():
        assert allowed(job_head, 8265, operator) and not allowed(job_head, 6379, operator)


@pytest.mark.parametrize("job", sorted(JOBS))
def test_each_job_cluster_is_closed_to_all_but_its_own_pods_and_apart_from_serving(job):
    head, worker, submitter = JOBS[job]
    other_head, _, _ = JOBS[({*JOBS} - {job}).pop()]
    own = {"namespace": NAMESPACE, "labels": worker}
    for port in (6379, 8265, 10001, 52365):
        assert allowed(head, port, own)
        # A training or scoring pod (running whatever code a job was given) reaches neither the
        # serving cluster's control plane nor the other job's, and serving pods not the job's.
        for target, source in ((HEAD, worker), (HEAD, head), (other_head, worker), (head, GPU), (head, CPU)):
            assert not allowed(target, port, {"namespace": NAMESPACE, "labels": source}), (target, source, port)
        for attacker in (ANOTHER_APP, OTHER_NAMESPACE, INGRESS, GATEWAY_POD):
            assert not allowed(head, port, attacker)
    # Its submitter reaches its own head's job API and nothing else; no job reaches the app port.
    assert allowed(head, 8265, {"namespace": NAMESPACE, "labels": submitter})
    for target, port in ((head, 6379), (HEAD, 8265), (other_head, 8265), (HEAD, 8000)):
        assert not allowed(target, port, {"namespace": NAMESPACE, "labels": submitter}), (target, port)
    for source in (head, worker):
        assert not allowed(HEAD, 8000, {"namespace": NAMESPACE, "labels": source})
    assert not allowed(head, 8000, INGRESS)


def test_every_ray_pod_and_gateway_is_selected_by_some_policy():
    job_pods = [labels for head, worker, _ in JOBS.values() for labels in (head, worker)]
    for labels in (HEAD, GPU, CPU, GATEWAY, *job_pods):
        assert any(_selects(p["spec"]["podSelector"], labels) for p in POLICIES), labels
