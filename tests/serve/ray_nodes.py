"""A multi-node Ray cluster on loopback, started the way KubeRay starts its pods (`ray start`), with
GCS fault tolerance on a real Redis: the parts the high-availability and probe tests kill and watch.

Every process of the cluster carries a marker in its environment, so the tests can stop exactly
these processes (never `ray stop`, which would also stop the suite's own cluster).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.helpers import free_port

MARKER = "CXR_TEST_RAY_CLUSTER"
RAY = str(Path(sys.executable).with_name("ray"))


class RedisServer:
    """Debian's redis-server on loopback, password-protected, as a foreground process."""

    def __init__(self, root: Path, password: str):
        self.port, self.password, self.root = free_port(), password, root
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--requirepass", self.password,
             "--dir", str(self.root), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ping = subprocess.run(
                ["redis-cli", "-p", str(self.port), "--no-auth-warning", "-a", self.password, "ping"],
                capture_output=True, text=True,
            )  # fmt: skip
            if ping.stdout.strip() == "PONG":
                return self
            time.sleep(0.2)
        raise RuntimeError("redis-server did not start")

    def all_values(self) -> bytes:
        """Every string and hash value Redis holds, raw, in one Lua call: what the GCS stored."""
        script = """local out = {}
for _, key in ipairs(redis.call('KEYS', '*')) do
  local kind = redis.call('TYPE', key).ok
  if kind == 'hash' then
    for _, v in ipairs(redis.call('HGETALL', key)) do table.insert(out, v) end
  elseif kind == 'string' then table.insert(out, redis.call('GET', key)) end
end
return table.concat(out, '\\n')"""
        command = ["redis-cli", "-p", str(self.port), "--no-auth-warning", "-a", self.password, "--raw"]
        done = subprocess.run([*command, "EVAL", script, "0"], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def kill_all(processes: list[psutil.Process]) -> int:
    """SIGKILL each (those already gone are skipped) and reap them; returns how many there were."""
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)
    return len(processes)


@dataclass
class RayNode:
    """One `ray start` node; found again by its node manager port (unique on this host)."""

    node_manager_port: int
    agent_port: int
    resources: str
    started: list[int] = field(default_factory=list)

    def raylet(self) -> psutil.Process | None:
        for process in psutil.process_iter(["name", "cmdline"]):
            cmdline = process.info["cmdline"] or []
            if process.info["name"] == "raylet" and f"--node_manager_port={self.node_manager_port}" in cmdline:
                return process
        return None

    def kill(self) -> int:
        """SIGKILL the node's raylet and every process under it (workers, replicas, agents), as a
        lost machine or a killed pod would: nothing gets to shut down cleanly. Returns how many died."""
        raylet = self.raylet()
        assert raylet is not None, "the node's raylet is not running"
        return kill_all([raylet, *raylet.children(recursive=True)])


class RayCluster:
    """A head node (GCS on external Redis if given, dashboard for Serve's REST API) plus worker
    nodes. ``wrap`` goes before each `ray start` command (e.g. to start it in another mount namespace)."""

    def __init__(
        self,
        redis: RedisServer | None,
        env: dict[str, str],
        cpus_per_node: float,
        resources: str,
        wrap: list[str] | None = None,
    ):
        # A short root: Ray's Unix socket paths under it must stay within 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayha", dir="/tmp"))
        self.marker = uuid.uuid4().hex
        self.redis, self.cpus, self.resources = redis, cpus_per_node, resources
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.wrap = wrap or []
        self.env = {**os.environ, **env, MARKER: self.marker}
        if redis:  # GCS fault tolerance, as KubeRay configures it from gcsFaultToleranceOptions
            self.env |= {"RAY_REDIS_ADDRESS": redis.address, "RAY_external_storage_namespace": self.marker[:8]}
        self.nodes: list[RayNode] = []
        self._worker_ports = iter(range(20000, 30000, 500))  # each node its own range: one host

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, head: bool) -> RayNode:
        node = RayNode(free_port(), free_port(), self.resources)
        low = next(self._worker_ports)
        command = [
            RAY, "start", f"--num-cpus={self.cpus}", f"--resources={self.resources}",
            "--node-ip-address=127.0.0.1", f"--node-manager-port={node.node_manager_port}",
            f"--dashboard-agent-listen-port={node.agent_port}", f"--min-worker-port={low}",
            f"--max-worker-port={low + 400}", "--disable-usage-stats",
        ]  # fmt: skip
        if head:
            command += [
                "--head", f"--port={self.gcs_port}",
                f"--temp-dir={self.temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}",
            ]  # fmt: skip
            command += [f"--redis-password={self.redis.password}"] if self.redis else []
        else:
            command += [f"--address=127.0.0.1:{self.gcs_port}"]
        done = subprocess.run(self.wrap + command, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        self.nodes.append(node)
        return node

    def start(self, workers: int) -> RayCluster:
        self._start(head=True)
        for _ in range(workers):
            self._start(head=False)
        return self

    def add_node(self) -> RayNode:
        return self._start(head=False)

    # The GCS: killed and started again with the same command line and environment, as the head
    # pod's restart does; its state comes back from Redis.
    def gcs_process(self) -> psutil.Process | None:
        for process in psutil.process_iter(["name", "cmdline"]):
            if process.info["name"] == "gcs_server" and f"--gcs_server_port={self.gcs_port}" in (
                process.info["cmdline"] or []
            ):
                return process
        return None

    def kill_gcs(self) -> tuple[list[str], dict[str, str]]:
        process = self.gcs_process()
        assert process is not None, "gcs_server is not running"
        how = (process.cmdline(), process.environ())
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        return how

    def start_gcs(self, how: tuple[list[str], dict[str, str]]) -> None:
        cmdline, env = how
        log = open(self.temp_dir / "gcs_server.restarted.log", "ab")  # noqa: SIM115 (kept by the child)
        subprocess.Popen(cmdline, env=env, stdout=log, stderr=log, start_new_session=True)
        log.close()

    # Serve, through the dashboard's REST API: how KubeRay deploys and watches a RayService.
    def deploy(self, config: dict) -> None:
        response = httpx.put(f"{self.dashboard}/api/serve/applications/", json=config, timeout=60)
        assert response.status_code == 200, response.text

    def serve_details(self) -> dict | None:
        try:
            response = httpx.get(f"{self.dashboard}/api/serve/applications/", timeout=10)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def stop(self) -> None:
        """SIGKILL every process carrying this cluster's marker (GCS, raylets, workers, agents)."""
        mine = []
        for process in psutil.process_iter():
            try:
                if process.environ().get(MARKER) == self.marker:
                    mine.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        kill_all(mine)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
