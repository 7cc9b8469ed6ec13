"""The serving pods' read-only root filesystem, tried rather than assumed: a Ray node started as
KubeRay starts one (`ray start`), in a private mount namespace where `/` is read-only and only the
serving containers' emptyDir paths are writable (the checkpoint volume read-only, as mounted in
k8s), runs the shipped serve_config.yaml. It must become ready, serve and save a prediction, draw
the record's page and pictures, and log no "Read-only file system" anywhere.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from pymongo import MongoClient

from serve.api_keys import ApiKeys
from tests.helpers import free_port
from tests.k8s.conftest import K8S, by_kind, pod_specs, render, writable_paths
from tests.serve.helpers import chest_png, wait_until
from tests.serve.ray_nodes import RayCluster

ROOT = Path(__file__).resolve().parents[2]
OLD_TMP = "/mnt"  # an empty directory on Debian: this machine's /tmp, read-only, goes there


def serving_writable_paths() -> list[str]:
    """The paths every serving container may write to (the intersection over the pods)."""
    (service,) = by_kind(render(K8S / "overlays" / "gpu"), "RayService")
    per_pod = [set(writable_paths(pod, container)) for pod in pod_specs(service) for container in pod["containers"]]
    return sorted(set.intersection(*per_pod))


def under_tmp(path: Path) -> bool:
    return path.resolve().is_relative_to("/tmp")


def seen_inside(path: Path) -> Path:
    """Where a path of this machine is seen in the namespace: what was under /tmp, at /mnt."""
    path = path.resolve()
    return Path(OLD_TMP) / path.relative_to("/tmp") if under_tmp(path) else path


def read_only_wrap(writable: list[str]) -> list[str]:
    """`unshare` into a private mount namespace: this machine's /tmp kept read-only at /mnt (the
    checkpoint volume: the test checkpoint lives there), a fresh tmpfs on each writable path, this
    checkout and its virtual environment bound back read-only where they were if they were under
    /tmp (a clone in /tmp, as on CI), then / remounted read-only; then the wrapped command."""
    steps = [f"mount --bind /tmp {OLD_TMP}", f"mount -o remount,bind,ro {OLD_TMP}"]
    steps += [f"mount -t tmpfs tmpfs {path}" for path in writable]
    code = sorted({ROOT.resolve(), Path(sys.prefix).resolve()})
    for path in [c for c in code if under_tmp(c) and not any(c != o and c.is_relative_to(o) for o in code)]:
        steps += [f"mkdir -p {path}", f"mount --bind {seen_inside(path)} {path}", f"mount -o remount,bind,ro {path}"]
    steps += ["mount -o remount,bind,ro /"]
    return ["unshare", "--mount", "--propagation", "private", "bash", "-c", " && ".join(steps) + ' && exec "$@"', "_"]


def inside_logs(cluster: RayCluster) -> Path:
    """The node's Ray logs, seen through its raylet's root (they live on the namespace's tmpfs)."""
    raylet = cluster.nodes[0].raylet()
    (session,) = Path(f"/proc/{raylet.pid}/root{cluster.temp_dir}").glob("session_2*")
    return session / "logs"


def test_the_serving_pods_run_with_a_read_only_root(mongo_server, tiny_checkpoint):
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine does not allow a private mount namespace: {probe.stderr.decode().strip()}")
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
        logs = inside_logs(cluster)
        found = subprocess.run(["grep", "-rl", "Read-only file system", str(logs)], capture_output=True, text=True)
        assert found.stdout == "", found.stdout
        assert any(logs.rglob("*.log"))  # the search looked at real logs
    finally:
        cluster.stop()
