"""High availability, proved on this machine as KubeRay's own e2e test does: the Serve app as the
gpu overlay ships it (two of each deployment, one per node), on a two-node Ray cluster whose GCS
keeps its state in a real Redis, under steady load while (a) the GCS is killed and started again
and (b) a worker node is lost and its pod comes back. Also the pods' probe commands, run as the
kubelet runs them against these `ray start` nodes.

The figures of each run (success rates, recovery times) go to test-artifacts/high-availability.json;
the README's table is taken from one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from pymongo import MongoClient

from serve.api_keys import ApiKeys
from tests.helpers import free_port, skip_or_fail_in_ci
from tests.serve.conftest import Service
from tests.serve.helpers import SteadyLoad, mount_secret, wait_until
from tests.serve.ray_nodes import RayCluster, RayNode, RedisServer

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "test-artifacts" / "high-availability.json"
RAY_SERVICE = yaml.safe_load((ROOT / "k8s" / "base" / "rayservice.yaml").read_text())
DEPLOYMENTS = ("BatchedClassifier", "Ingress", "ResultStore")


def shipped_config(checkpoint: Path, port: int, env: dict) -> dict:
    """The gpu overlay's serveConfigV2 (k8s/base/rayservice.yaml) with only what this machine
    lacks changed: loopback, a local checkpoint and environment, and CPUs for the GPU. Replica
    counts, autoscaling bounds, max_replicas_per_node and the queue bounds stay as shipped."""
    config = yaml.safe_load(RAY_SERVICE["spec"]["serveConfigV2"])
    config["http_options"].update(host="127.0.0.1", port=port)
    app = config["applications"][0]
    app["args"]["checkpoint"] = str(checkpoint)
    app["runtime_env"] = {"env_vars": env}
    for deployment in app["deployments"]:
        if deployment["name"] == "BatchedClassifier":
            deployment["ray_actor_options"].update(num_cpus=0.5, num_gpus=0)
    return config


def wanted_replicas(config: dict) -> dict[str, int]:
    out = {}
    for deployment in config["applications"][0]["deployments"]:
        count = deployment.get("num_replicas", "auto")
        out[deployment["name"]] = count if isinstance(count, int) else deployment["autoscaling_config"]["min_replicas"]
    return out


class HaApp:
    def __init__(self, cluster: RayCluster, service: Service, config: dict, redis: RedisServer, secrets: dict):
        self.cluster, self.service, self.config, self.redis, self.secrets = cluster, service, config, redis, secrets
        self.wanted = wanted_replicas(config)

    def running(self) -> dict[str, list[dict]]:
        """RUNNING replicas per deployment, as the dashboard's Serve API (KubeRay's view) reports."""
        details = self.cluster.serve_details() or {}
        app = (details.get("applications") or {}).get("cxr") or {}
        return {
            name: [r for r in deployment["replicas"] if r["state"] == "RUNNING"]
            for name, deployment in (app.get("deployments") or {}).items()
        }

    def fully_up(self) -> bool:
        """Every deployment at its shipped count, no two replicas of one on the same node."""
        running = self.running()
        return all(
            len(running.get(name, [])) == count and len({r["node_id"] for r in running[name]}) == count
            for name, count in self.wanted.items()
        )

    def wait_fully_up(self, timeout_s: float = 240) -> None:
        wait_until(self.fully_up, timeout_s, f"every deployment at {self.wanted}, one replica per node")
        wait_until(lambda: self.service.http.get("/readyz").status_code == 200, 60, "the app ready")


def record(name: str, figures: dict) -> None:
    FIGURES.parent.mkdir(exist_ok=True)
    known = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    FIGURES.write_text(json.dumps(known | {name: figures}, indent=2) + "\n")
    print(name, figures)


@pytest.fixture(scope="module")
def ha(tmp_path_factory, mongo_server, tiny_checkpoint):
    for program in ("redis-server", "redis-cli"):
        if not shutil.which(program):
            skip_or_fail_in_ci(f"{program} is not installed (Debian redis-server; .ci/run installs it)")
    redis = RedisServer(tmp_path_factory.mktemp("redis"), "redis-test-password").start()
    database = "cxr_ha"
    # The secrets are files on the nodes, as the cpu pods' Secret volume in k8s (CXR_SECRETS_DIR);
    # the plain settings (and a canary) come from the app's runtime_env, which Serve stores in the GCS.
    secrets = {
        "CXR_MONGODB_URI": mongo_server.uri,
        "CXR_SESSION_SECRET": f"ha-session-{uuid.uuid4().hex}",
        "CXR_PSEUDONYM_KEY": f"ha-pseudonym-{uuid.uuid4().hex}",
    }
    plain = {"CXR_MONGODB_DATABASE": database, "CXR_AUTH": "api_key", "CXR_HA_CANARY": f"canary-{uuid.uuid4().hex}"}
    # Test clusters run without Ray's token auth (the k8s manifests turn it on).
    folder = tmp_path_factory.mktemp("secrets") / "cxr"
    mount_secret(folder, secrets)
    node_env = {"RAY_AUTH_MODE": "disabled", "CXR_SECRETS_DIR": str(folder)}
    cluster = RayCluster(redis, node_env, cpus_per_node=2, resources='{"cxr_cpu_node": 1}')
    try:
        cluster.start(workers=1)
        _, api_key = ApiKeys(MongoClient(mongo_server.uri)[database]).create("ha-test", "admin", 100_000)
        port = free_port()
        config = shipped_config(tiny_checkpoint, port, plain)
        cluster.deploy(config)
        service = Service(f"http://127.0.0.1:{port}", tiny_checkpoint, plain, port, api_key)
        app = HaApp(cluster, service, config, redis, secrets)
        app.wait_fully_up()
        yield app
    finally:
        cluster.stop()
        redis.stop()


def probes() -> list[tuple[str, list[str]]]:
    out = []
    for group in RAY_SERVICE["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        for kind in ("livenessProbe", "readinessProbe"):
            out.append((f"{group['groupName']} {kind}", container[kind]["exec"]["command"]))
    return out


def run_probe(command: list[str], node: RayNode, http_port: int) -> int:
    """The probe's own command with this node's ports for KubeRay's defaults (52365, 8000)."""
    script = command[-1].replace("localhost:52365", f"127.0.0.1:{node.agent_port}")
    script = script.replace("localhost:8000", f"127.0.0.1:{http_port}")
    return subprocess.run(command[:-1] + [script], capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("name, command", probes(), ids=[n for n, _ in probes()])
def test_each_worker_probe_succeeds_on_every_live_node(ha, name, command):
    if not shutil.which("wget"):
        skip_or_fail_in_ci("wget is not installed (the probes use it, as KubeRay's own do)")
    ha.wait_fully_up()
    for node in ha.cluster.nodes:
        assert run_probe(command, node, ha.service.port) == 0, (name, node)


def test_probes_fail_where_the_node_or_the_proxy_is_gone(ha):
    """Neither probe is a rubber stamp: readiness fails where no proxy answers, and liveness fails
    for a node whose raylet is dead (a stopped agent port)."""
    ha.wait_fully_up()
    liveness = next(c for n, c in probes() if n.endswith("livenessProbe"))
    readiness = next(c for n, c in probes() if n.endswith("readinessProbe"))
    node = ha.cluster.nodes[0]
    assert run_probe(readiness, node, free_port()) != 0
    gone = RayNode(node_manager_port=0, agent_port=free_port(), resources="")
    assert run_probe(liveness, gone, ha.service.port) != 0


def test_no_secret_reaches_the_gcs_store_in_redis(ha):
    """From the attacker's side: whoever reads the GCS's Redis (or a backup of it) learns every
    deployment's arguments and runtime_env. The secrets must not be there, under any key."""
    ha.wait_fully_up()
    stored = ha.redis.all_values()
    # The search can find what Serve stores: the canary from the app's runtime_env is there.
    assert ha.service.env["CXR_HA_CANARY"].encode() in stored
    for name, value in ha.secrets.items():
        assert value.encode() not in stored, name


def test_killing_the_gcs_under_load_keeps_99_percent_and_the_cluster_recovers(ha):
    ha.wait_fully_up()
    raylets = [node.raylet().pid for node in ha.cluster.nodes]
    replicas = {r["pid"] for rs in ha.running().values() for r in rs}
    with SteadyLoad(ha.service, "P-HA-GCS") as load:
        before = len(load.statuses)
        how = ha.cluster.kill_gcs()
        killed = time.monotonic()
        # Traffic through a control-plane outage: at least 10 s and 15 answers with no GCS.
        load.more(15, "traffic while the GCS is down")
        time.sleep(max(0.0, 10 - (time.monotonic() - killed)))
        assert ha.cluster.gcs_process() is None, "the GCS came back on its own; the outage is not real"
        during = load.statuses[before:]
        outage_s = time.monotonic() - killed
        ha.cluster.start_gcs(how)
        restarted = time.monotonic()
        # Recovered: the state is back from Redis (the dashboard lists the app and its replicas
        # through the new GCS), every deployment at its count.
        ha.wait_fully_up(120)
        recovery_s = time.monotonic() - restarted
        load.more(20, "traffic after the GCS is back")
    # Nothing else restarted: the same raylets and replica processes serve.
    assert [node.raylet().pid for node in ha.cluster.nodes] == raylets
    assert {r["pid"] for rs in ha.running().values() for r in rs} == replicas
    figures = {
        "requests": len(load.statuses),
        "success_rate": round(load.success_rate, 4),
        "answered_while_gcs_down": len(during),
        "success_while_gcs_down": round(sum(s == 200 for s in during) / len(during), 4),
        "gcs_down_s": round(outage_s, 1),
        "recovered_after_restart_s": round(recovery_s, 1),
    }
    record("gcs_killed", figures)
    assert load.success_rate >= 0.99, (figures, sorted(set(load.statuses)))


def test_losing_a_worker_node_under_load_keeps_serving_and_its_replicas_come_back(ha):
    ha.wait_fully_up()
    victim = ha.cluster.nodes[-1]  # a worker node, never the head
    on_victim = {p.pid for p in victim.raylet().children(recursive=True)}
    lost = {name: [r for r in rs if r["pid"] in on_victim] for name, rs in ha.running().items()}
    assert all(len(lost[name]) == 1 for name in DEPLOYMENTS), lost  # one of each, as spread
    with SteadyLoad(ha.service, "P-HA-NODE") as load:
        before = len(load.statuses)
        victim.kill()
        killed = time.monotonic()
        # Serve notices: the lost replicas leave the RUNNING set; meanwhile the other node serves.
        wait_until(
            lambda: not any(r["pid"] in on_victim for rs in ha.running().values() for r in rs),
            120,
            "Serve to drop the lost node's replicas",
        )
        noticed_s = time.monotonic() - killed
        load.more(10, "traffic on the surviving node")
        during = load.statuses[before:]
        # KubeRay restarts the worker pod: a new node joins, and the replicas return to two of each
        # on two nodes (max_replicas_per_node 1 keeps the survivors from doubling up).
        ha.cluster.add_node()
        ha.wait_fully_up(240)
        replaced_s = time.monotonic() - killed
        after = load.more(20, "traffic after the node came back")
    figures = {
        "requests": len(load.statuses),
        "success_rate": round(load.success_rate, 4),
        "answered_until_noticed": len(during),
        "success_until_noticed": round(sum(s == 200 for s in during) / len(during), 4),
        "statuses": sorted(set(load.statuses)),
        "lost_replicas_noticed_s": round(noticed_s, 1),
        "replaced_on_new_node_s": round(replaced_s, 1),
    }
    record("worker_node_killed", figures)
    assert after[-10:] == [200] * 10, (figures, after)
    assert load.success_rate >= 0.95, figures
    # Pods restart, not the service: the head's replicas served throughout.
    survivors = {r["pid"] for rs in ha.running().values() for r in rs}
    assert all(psutil.pid_exists(pid) for pid in survivors)
