"""Shared readings of the rendered k8s/ documents for the tests beside it: the real CRD
validators, the Serve config inside a RayService, its worker groups and containers."""

from __future__ import annotations

import jsonschema
import yaml

from tests.k8s.conftest import crd_schema, shared_file

CRDS = {
    "RayService": "kuberay-crds/ray.io_rayservices.yaml",
    "RayJob": "kuberay-crds/ray.io_rayjobs.yaml",
    "RayCluster": "kuberay-crds/ray.io_rayclusters.yaml",
    "PodMonitor": "prometheus-crds/monitoring.coreos.com_podmonitors.yaml",
}
DEPLOYMENTS = {"BatchedClassifier", "ResultStore", "Ingress"}


def validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema(shared_file(CRDS[kind])))


def serve_config(service: dict) -> dict:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def by_kind_group(service: dict, group: str) -> dict | None:
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return next((g for g in groups if g["groupName"] == group), None)


def containers(doc: dict) -> list[dict]:
    spec = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def secret_files(pod: dict, container: dict) -> dict[str, dict]:
    """Folder -> {file name: (Secret, key)} for the container's Secret mounts (plain or projected)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    out = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        sources = [s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
        if "secret" in volume:
            sources.append({"name": volume["secret"]["secretName"], "items": volume["secret"]["items"]})
        if sources:
            assert mount["readOnly"] is True, mount
            out[mount["mountPath"]] = {i["path"]: (s["name"], i["key"]) for s in sources for i in s["items"]}
    return out
