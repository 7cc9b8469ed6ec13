"""Per-process CPU accounting of the serving cluster during a load phase (``/proc`` via psutil).

Every process of the local cluster is put in one group by its command line, so the bench can say
where each image's CPU goes: the model, or the HTTP path around it (proxy, Ingress, handles,
storage, database, Ray's own daemons).
"""

from __future__ import annotations

import os

import psutil

GROUPS = (  # first match wins
    ("ServeReplica:cxr:BatchedClassifier", "classifier replicas"),
    ("ServeReplica:cxr:Ingress", "Ingress"),
    ("ServeReplica:cxr:ResultStore", "ResultStore"),
    ("ProxyActor", "HTTP proxy"),
    ("ServeController", "Serve controller"),
    ("secantusd", "database (SecantusDB)"),
    ("EmbeddedMongo", "database (SecantusDB)"),
    ("gcs_server", "Ray daemons"),
    ("raylet", "Ray daemons"),
    ("dashboard", "Ray daemons"),
    ("log_monitor", "Ray daemons"),
    ("runtime_env", "Ray daemons"),
    ("ray::", "other Ray workers"),
)


def _group(cmdline: list[str]) -> str | None:
    text = " ".join(cmdline)
    return next((name for marker, name in GROUPS if marker in text), None)


def snapshot() -> dict[int, tuple[str, float]]:
    """pid -> (group, CPU seconds so far) for every cluster process except this one."""
    taken = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid == os.getpid():
            continue
        group = _group(process.info["cmdline"] or [])
        if group is None:
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        taken[process.pid] = (group, times.user + times.system)
    return taken


def per_group(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds each group used between two snapshots (processes born meanwhile count from 0)."""
    used: dict[str, float] = {}
    for pid, (group, seconds) in after.items():
        used[group] = used.get(group, 0.0) + seconds - before.get(pid, (group, 0.0))[1]
    return used
