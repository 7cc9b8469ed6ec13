"""The deploy steps in the READMEs against the manifests they deploy: every Secret a pod of the
overlay references is created there, with every key it reads (a missing one leaves pods waiting in
CreateContainerConfigError or ContainerCreating), and API keys are made in a pod that can reach the
database (the head has no secrets: `cxr keys` there would time out)."""

from __future__ import annotations

import re

import pytest

from tests.k8s.conftest import K8S, ROOT, pod_specs, render

DOCS = {
    "gpu": [ROOT / "README.md", K8S / "overlays" / "gpu" / "README.md"],
    "cpu-dev": [K8S / "overlays" / "cpu-dev" / "README.md"],
}


def referenced_secrets(docs: list[dict]) -> dict[str, set[str]]:
    """Secret name -> the keys the overlay's pods (and Ray's cluster spec) read from it."""
    found: dict[str, set[str]] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            ref = node.get("secretKeyRef")
            if ref and not ref.get("optional"):
                found.setdefault(ref["name"], set()).add(ref["key"])
            if "secretName" in node:
                found.setdefault(node["secretName"], set()).update(i["key"] for i in node.get("items", []))
            for source in node.get("sources", []):  # a projected volume's Secrets
                if "secret" in source:
                    found.setdefault(source["secret"]["name"], set()).update(
                        i["key"] for i in source["secret"]["items"]
                    )
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for doc in docs:  # what pods read; the Ingress's TLS Secret is cert-manager's to make
        if doc["kind"] in ("RayService", "RayJob", "StatefulSet", "Deployment"):
            walk(doc["spec"])
    return found


def created_secrets(text: str, namespace: str) -> dict[str, set[str]]:
    """`kubectl -n NS create secret generic NAME --from-literal=KEY=...` in the text's shell blocks."""
    shell = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S)).replace("\\\n", " ")
    created = {}
    for line in shell.splitlines():
        match = re.search(rf"kubectl -n {namespace} create secret generic ([\w-]+)(.*)", line)
        if match:
            created[match.group(1)] = set(re.findall(r"--from-(?:literal|file)=([\w.-]+)=", match.group(2)))
    return created


@pytest.mark.parametrize("name", ["gpu", "cpu-dev"])
def test_every_secret_the_overlay_reads_is_created_by_its_deploy_steps(name):
    docs = render(K8S / "overlays" / name)
    (namespace,) = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    needed = referenced_secrets(docs)
    assert "cxr-gateway-api-key" in needed  # the walk sees volumes as well as env references
    for path in DOCS[name]:
        created = created_secrets(path.read_text(), namespace)
        for secret, keys in needed.items():
            assert secret in created, f"{path.name}: no step creates Secret {secret} (keys {sorted(keys)})"
            assert keys <= created[secret], f"{path.name}: Secret {secret} lacks {sorted(keys - created[secret])}"


@pytest.mark.parametrize("name", ["gpu", "cpu-dev"])
def test_api_keys_are_made_in_a_pod_that_reaches_the_database(name):
    docs = render(K8S / "overlays" / name)
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    head = pod_specs(service)[0]
    assert not any(e["name"] == "CXR_MONGODB_URI" for c in head["containers"] for e in c.get("env", []))
    for path in DOCS[name]:
        text = path.read_text()
        assert "cxr keys create" in text and "ray.io/node-type=head" not in text, path
        assert "-l app.kubernetes.io/component=ray-cpu-worker" in text, path
