"""Offline tools for the k8s/ tests: CRD schemas as JSON Schema, and overlay rendering.

Rendering uses `kubectl kustomize` where kubectl exists. Elsewhere a small renderer for exactly
the kustomize features k8s/ uses (resources, namespace, images, RFC 6902 patches, `$patch: delete`,
configMapGenerator) stands in, and where both exist the tests check that they agree.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path

import jsonpatch
import pytest
import yaml

from tests.helpers import skip_or_fail_in_ci

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SHARED = ROOT.parent / "shared"
OVERLAYS = ("gpu", "cpu-dev")


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        skip_or_fail_in_ci(f"../shared/{relative} is not here (a user's own clone); CI provides it")
    return path


@functools.lru_cache(maxsize=None)
def crd_schema(path: Path, version: str = "v1") -> dict:
    """The CRD's openAPIV3Schema as JSON Schema in which unknown fields are errors."""
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return to_json_schema(served["schema"]["openAPIV3Schema"])


def to_json_schema(node: dict) -> dict:
    out: dict = {}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "type" in node:
        out["type"] = [node["type"], "null"] if node.get("nullable") else node["type"]
    for key in (
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "required",
        "format",
    ):
        if key in node:
            out[key] = node[key]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            out[key] = [to_json_schema(n) for n in node[key]]
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    elif "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False  # what the API server's pruning makes of unknown fields
    return out


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _key(doc: dict) -> tuple:
    return doc["kind"], doc["metadata"]["name"]


def _matches(doc: dict, target: dict) -> bool:
    group_version = doc["apiVersion"]
    group = group_version.split("/")[0] if "/" in group_version else ""
    return (
        target.get("kind", doc["kind"]) == doc["kind"]
        and target.get("name", doc["metadata"]["name"]) == doc["metadata"]["name"]
        and target.get("group", group) == group
    )


def render_fallback(directory: Path) -> list[dict]:
    """Our subset of kustomize, for machines without kubectl."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        docs += render_fallback(path) if path.is_dir() else _documents(path)
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for item in generator["files"]:
            name, _, source = item.partition("=")
            data[name] = (directory / source).read_text()
        labels = generator.get("options", {}).get("labels", {})
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"], "labels": dict(labels)},
                "data": data,
            }
        )
    for patch in kustomization.get("patches", []):
        body = yaml.safe_load((directory / patch["path"]).read_text())
        if isinstance(body, dict) and body.get("$patch") == "delete":
            docs = [d for d in docs if _key(d) != _key(body)]
            continue
        operations = jsonpatch.JsonPatch(body)
        docs = [operations.apply(d) if _matches(d, patch["target"]) else d for d in docs]
    for entry in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        _retag(docs, image)
    return copy.deepcopy(docs)


def _retag(node, image: dict) -> None:
    """kustomize's `images`: name[:tag] -> newName:newTag."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in list(items):
        if key == "image" and isinstance(value, str):
            name, _, tag = value.partition(":")
            if name == image["name"]:
                node[key] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
        else:
            _retag(value, image)


def render_kubectl(directory: Path) -> list[dict] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def render(directory: Path) -> list[dict]:
    docs = render_kubectl(directory)
    return docs if docs is not None else render_fallback(directory)


def kustomizations(name: str) -> tuple[Path, Path, Path]:
    """An environment's kustomizations: serving, then the two jobs, each applied on its own, on
    purpose: training and archive scoring."""
    return K8S / "overlays" / name, K8S / "training" / "overlays" / name, K8S / "scoring" / "overlays" / name


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    """Everything one environment runs: its serving, training and scoring overlays together."""
    return request.param, [doc for directory in kustomizations(request.param) for doc in render(directory)]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] in ("RayService", "RayJob"):
        spec = doc["spec"].get("rayClusterConfig") or doc["spec"]["rayClusterSpec"]
        pods = [g["template"]["spec"] for g in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]]
        if doc["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode" and doc["kind"] == "RayJob":
            # The submitter pod: without a template of ours, KubeRay's default (no securityContext).
            pods.append(doc["spec"]["submitterPodTemplate"]["spec"])
        return pods
    if doc["kind"] in ("StatefulSet", "Deployment"):
        return [doc["spec"]["template"]["spec"]]
    return []


def writable_paths(pod: dict, container: dict) -> list[str]:
    """The container's mount paths backed by an emptyDir (what stays writable on a read-only root)."""
    scratch = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    return [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in scratch]
