"""The training and scoring RayJobs' read-only root filesystem, tried rather than assumed: a Ray
node started as KubeRay starts one (`ray start`) in a private mount namespace where `/` is read-only
and only what the jobs' manifests mount is writable (/tmp an emptyDir, the data volume at /mnt/cxr).
The manifests' own entrypoints, scaled down to this machine, are submitted as KubeRay's submitter
does (`ray job submit`): `cxr data make-demo` and `cxr train` (both stages), then `cxr score --save`
with the checkpoint it wrote. Both must succeed, leave their results on the volume, and no Ray log
may say "Read-only file system".
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from pymongo import MongoClient
from ray.job_submission import JobStatus, JobSubmissionClient

from cxr_model.checkpoint import read_card
from serve.records import PREDICTIONS
from tests.k8s.conftest import K8S, by_kind, pod_specs, render, writable_paths
from tests.k8s.read_only import need_mount_namespaces, read_only_errors, read_only_wrap
from tests.serve.ray_nodes import RayCluster

CXR = shlex.quote(str(Path(sys.executable).with_name("cxr")))
VOLUME = "/mnt/cxr"
# The manifests' entrypoints at this machine's size: one CPU worker, a small model, one epoch each.
TRAIN = (
    f"{CXR} data make-demo {VOLUME}/data/demo --per-class 20 && "
    f"{CXR} train --data-dir {VOLUME}/data/demo --output-dir {VOLUME}/runs/demo --backbone densenet121"
    " --weights none --image-size 64 --workers 1 --no-gpu --cpus-per-worker 1 --batch-size 16"
    " --loader-workers 1 --stage1-epochs 1 --stage2-epochs 1 --no-progress --model-version read-only"
)
SCORE = (
    f"{CXR} score --input {VOLUME}/archive/manifest.csv --checkpoint {VOLUME}/runs/demo/checkpoint"
    f" --output {VOLUME}/scores/demo.parquet --actors 1 --cpus-per-actor 1 --batch-size 8 --save"
)


def job_mounts() -> tuple[list[str], list[str]]:
    """What every container of both jobs' Ray pods may write to: emptyDir paths and volume paths."""
    docs = render(K8S / "training" / "overlays" / "gpu") + render(K8S / "scoring" / "overlays" / "gpu")
    scratch, volumes = [], []
    for job in by_kind(docs, "RayJob"):
        spec = job["spec"]["rayClusterSpec"]
        pods = pod_specs({"kind": "RayService", "spec": {"rayClusterConfig": spec}})  # no submitter
        for pod in pods:
            claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
            for container in pod["containers"]:
                assert container["securityContext"]["readOnlyRootFilesystem"] is True, job["metadata"]
                scratch.append(set(writable_paths(pod, container)))
                mounts = container["volumeMounts"]
                volumes.append({m["mountPath"] for m in mounts if m["name"] in claims and not m.get("readOnly")})
    return sorted(set.intersection(*scratch)), sorted(set.intersection(*volumes))


def run_job(client: JobSubmissionClient, entrypoint: str, timeout: float) -> tuple[JobStatus, str]:
    """Submit as KubeRay's submitter pod does and wait for the end: (status, the job's logs)."""
    job = client.submit_job(entrypoint=entrypoint)
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"{entrypoint} still {status}:\n{client.get_job_logs(job)[-3000:]}"
        time.sleep(2)
    return status, client.get_job_logs(job)


def succeed(client: JobSubmissionClient, entrypoint: str, timeout: float) -> None:
    status, logs = run_job(client, entrypoint, timeout)
    assert status == JobStatus.SUCCEEDED, f"{entrypoint}: {status}\n{logs[-5000:]}"


def test_the_training_and_scoring_jobs_run_with_a_read_only_root(mongo_server, tmp_path):
    need_mount_namespaces()
    scratch, volumes = job_mounts()
    assert (scratch, volumes) == (["/tmp"], [VOLUME])  # what the manifests promise, nothing else
    data = tmp_path / "volume"
    data.mkdir()
    database = "cxr_read_only_jobs"
    node_env = {"RAY_AUTH_MODE": "disabled", "CXR_MONGODB_URI": mongo_server.uri, "CXR_MONGODB_DATABASE": database}
    cluster = RayCluster(None, node_env, 2, "{}", wrap=read_only_wrap(scratch, {VOLUME: data}))
    try:
        cluster.start(workers=0)
        client = JobSubmissionClient(cluster.dashboard)
        succeed(client, TRAIN, 600)
        card = read_card(data / "runs" / "demo" / "checkpoint")
        assert card.version == "read-only"
        # The archive's manifest, as the scoring job's entrypoint reads it: paths relative to it.
        images = sorted(p.name for p in (data / "data" / "demo" / "Normal" / "images").iterdir())
        (data / "archive").mkdir()
        rows = [f"../data/demo/Normal/images/{name},P-RO-{i}" for i, name in enumerate(images)]
        (data / "archive" / "manifest.csv").write_text("\n".join(["path,patient_id", *rows]) + "\n")
        succeed(client, SCORE, 300)
        scored = pq.read_table(data / "scores" / "demo.parquet").to_pylist()
        assert sorted(Path(row["path"]).name for row in scored) == images
        records = MongoClient(mongo_server.uri)[database][PREDICTIONS]
        assert records.count_documents({"model.version": "read-only"}) == len(images)
        assert read_only_errors(cluster) == ""
        # The root really is read-only to the jobs: writing beside the volume or in the home fails.
        # (Checked last: these jobs log the very error searched for above.)
        for path in ["/mnt/elsewhere", str(Path.home() / "written")]:
            status, logs = run_job(client, f"touch {path}", 60)
            assert status == JobStatus.FAILED and "Read-only file system" in logs, (path, status, logs)
    finally:
        cluster.stop()
