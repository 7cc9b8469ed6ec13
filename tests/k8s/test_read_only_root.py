"""The serving pods' read-only root filesystem, tried rather than assumed: a Ray node started as
KubeRay starts one (`ray start`), in a private mount namespace where `/` is read-only and only the
serving containers' emptyDir paths are writable (the checkpoint volume read-only, as mounted in
k8s), runs the shipped serve_config.yaml. It must become ready, serve and save a prediction, draw
the record's page and pictures, and log no "Read-only file system" anywhere.
"""

from __future__ import annotations

import re

import httpx
import yaml
from pymongo import MongoClient

from serve.api_keys import ApiKeys
from tests.helpers import free_port
from tests.k8s.conftest import K8S, by_kind, pod_specs, render, writable_paths
from tests.k8s.read_only import ROOT, need_mount_namespaces, read_only_errors, read_only_wrap, seen_inside
from tests.serve.helpers import chest_png, wait_until
from tests.serve.ray_nodes import RayCluster


def serving_writable_paths() -> list[str]:
    """The paths every serving container may write to (the intersection over the pods)."""
    (service,) = by_kind(render(K8S / "overlays" / "gpu"), "RayService")
    per_pod = [set(writable_paths(pod, container)) for pod in pod_specs(service) for container in pod["containers"]]
    return sorted(set.intersection(*per_pod))


def test_the_serving_pods_run_with_a_read_only_root(mongo_server, tiny_checkpoint):
    need_mount_namespaces()
    writable = serving_writable_paths()
    assert writable == ["/tmp"], writable  # what the manifests promise: /tmp and nothing else
    database = "cxr_read_only"
    _, api_key = ApiKeys(MongoClient(mongo_server.uri)[database]).create("read-only-test", "admin", 1000)
    node_env = {"RAY_AUTH_MODE": "disabled", "CXR_MONGODB_URI": mongo_server.uri}
    cluster = RayCluster(None, node_env, 2, '{"cxr_cpu_node": 1}', wrap=read_only_wrap(writable))
    try:
        cluster.start(workers=0)
        port = free_port()
        config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        config["http_options"]["port"] = port
        app = config["applications"][0]
        app["args"]["checkpoint"] = str(seen_inside(tiny_checkpoint))
        app["runtime_env"] = {"env_vars": {"CXR_MONGODB_DATABASE": database, "CXR_AUTH": "api_key"}}
        cluster.deploy(config)
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=60, headers={"Authorization": f"Bearer {api_key}"}
        )

        def ready() -> bool:
            try:
                return http.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 240, "the app ready on a read-only root")
        answer = http.post(
            "/api/v1/predictions",
            data={"patient_id": "P-RO-1", "save": "1"},
            files={"image": ("c.png", chest_png(11), "image/png")},
        )
        assert answer.status_code == 200 and answer.json()["saved"], answer.text
        page = http.get(f"/predictions/{answer.json()['prediction_id']}")
        assert page.status_code == 200
        pictures = set(re.findall(r'src="(/predictions/[^"]+)"', page.text))
        assert pictures
        for src in pictures:
            assert http.get(src.replace("&amp;", "&")).status_code == 200, src
        assert read_only_errors(cluster) == ""
    finally:
        cluster.stop()
