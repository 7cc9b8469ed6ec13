"""A read-only root filesystem, tried rather than assumed: a private mount namespace (`unshare`)
where `/` is read-only and only what a pod's manifest mounts is writable, for starting Ray nodes
as KubeRay's containers would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.ray_nodes import RayCluster

ROOT = Path(__file__).resolve().parents[2]
OLD_TMP = "/media"  # an empty directory on Debian: this machine's /tmp, read-only, goes there


def need_mount_namespaces() -> None:
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine does not allow a private mount namespace: {probe.stderr.decode().strip()}")


def under_tmp(path: Path) -> bool:
    return path.resolve().is_relative_to("/tmp")


def seen_inside(path: Path) -> Path:
    """Where a path of this machine is seen in the namespace: what was under /tmp, at /media."""
    path = path.resolve()
    return Path(OLD_TMP) / path.relative_to("/tmp") if under_tmp(path) else path


def read_only_wrap(scratch: list[str], volumes: dict[str, Path] | None = None) -> list[str]:
    """`unshare` into a private mount namespace, then run the wrapped command there:
    - this machine's /tmp kept read-only at /media (read-only volumes: a test's files live there);
    - each of `volumes` (a path inside -> a folder here) bound writable, as a PersistentVolumeClaim
      is mounted (its parent a read-only tmpfs, so nothing beside it is writable);
    - a fresh tmpfs on each `scratch` path (the emptyDirs);
    - this checkout and its virtual environment bound back read-only where they were, if they were
      under /tmp (a clone in /tmp, as on CI);
    - then / remounted read-only."""
    steps = [f"mount --bind /tmp {OLD_TMP}", f"mount -o remount,bind,ro {OLD_TMP}"]
    for inside, here in (volumes or {}).items():
        parent = Path(inside).parent
        steps += [f"mount -t tmpfs tmpfs {parent}", f"mkdir -p {inside}", f"mount --bind {here.resolve()} {inside}"]
        steps += [f"mount -o remount,ro {parent}"]
    steps += [f"mount -t tmpfs tmpfs {path}" for path in scratch]
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


def read_only_errors(cluster: RayCluster) -> str:
    """Every Ray log file of the node that says "Read-only file system" (none must)."""
    logs = inside_logs(cluster)
    assert any(logs.rglob("*.log"))  # the search looks at real logs
    found = subprocess.run(["grep", "-rl", "Read-only file system", str(logs)], capture_output=True, text=True)
    return found.stdout
