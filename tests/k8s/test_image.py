"""The container image, checked offline: every package the commands need is in it, dependencies
come from the lock at the versions CI tests, the GPL development database only when asked for,
and the build's commit in the code version."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.k8s.conftest import K8S, ROOT, by_kind, pod_specs, render, writable_paths

DOCKERFILE = (K8S / "Dockerfile").read_text()
spec = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock_requirements.py")
lock_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock_script)


def pins() -> dict[str, str]:
    lines = [line for line in (K8S / "requirements.lock").read_text().splitlines() if line and line[0] != "#"]
    return {canonicalize_name(name): version for name, version in (line.split("==") for line in lines)}


def test_every_package_of_the_project_is_copied_into_the_image():
    """`cxr gateway` and `cxr score` run from this image in k8s/: their packages must be in it."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = set(re.findall(r"^COPY --chown=\S+ (\w+) \./\1$", DOCKERFILE, re.MULTILINE))
    allowed = set(re.findall(r"^!(\w+)/\*\*$", (K8S / "Dockerfile.dockerignore").read_text(), re.MULTILINE))
    assert packages <= copied and packages <= allowed, (packages - copied, packages - allowed)


def test_the_lock_pins_every_runtime_dependency_within_pyproject_and_nothing_for_development():
    locked = pins()
    for requirement in lock_script.runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not locked"
        assert requirement.specifier.contains(locked[name], prereleases=True), (name, locked[name])
    # Closed: whatever the runtime dependencies pull in here is locked too.
    assert set(lock_script.closure(lock_script.runtime_requirements())) <= set(locked)
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    extra_only = {canonicalize_name(Requirement(r).name) for r in dev["dev"] + dev["embedded-db"]}
    needed = set(lock_script.closure(lock_script.runtime_requirements()))  # some dev tools are runtime deps too
    assert not (extra_only - needed) & set(locked), "a development or GPL package is in the production lock"
    assert "secantusdb" not in locked


def test_the_image_installs_the_lock_and_adds_the_gpl_database_only_when_asked():
    lock_install = DOCKERFILE.index("pip install --no-cache-dir -r requirements.lock")
    assert lock_install < DOCKERFILE.index("pip install --no-cache-dir --no-deps .")  # nothing resolved again
    assert re.search(r'^ARG EXTRAS=""$', DOCKERFILE, re.MULTILINE)  # production: no extras
    assert "embedded-db" not in DOCKERFILE.split("ARG EXTRAS")[1].split("\n", 1)[0]
    dev_readme = (K8S / "overlays" / "cpu-dev" / "README.md").read_text()
    assert "--build-arg EXTRAS=embedded-db" in dev_readme  # the dev cluster, which has no MongoDB
    assert re.search(r"^ARG RAY_IMAGE=rayproject/ray:[\d.]+-py311-gpu", DOCKERFILE, re.MULTILINE)


def test_the_embedded_database_writes_where_the_dev_pods_can_on_a_read_only_root():
    """cpu-dev runs the embedded database in its Ray pods, whose root filesystem is read-only: its
    folder must lie on a path every one of those containers mounts writable."""
    (folder,) = re.findall(r"CXR_EMBEDDED_DB_DIR=(\S+)", DOCKERFILE)
    (service,) = by_kind(render(K8S / "overlays" / "cpu-dev"), "RayService")
    for pod in pod_specs(service):
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert not any(e["name"] == "CXR_EMBEDDED_DB_DIR" for e in container.get("env", []))  # the image's
            assert any(Path(folder).is_relative_to(p) for p in writable_paths(pod, container)), container["name"]


def test_an_installed_copy_without_git_reports_the_commit_its_build_recorded(tmp_path):
    """What the image's build does (cxr_model/_build.py), and what code_version then says."""
    shutil.copytree(ROOT / "cxr_model", tmp_path / "cxr_model", ignore=shutil.ignore_patterns("__pycache__"))
    assert 'printf \'COMMIT = "%s"\\n\' "$GIT_COMMIT" > cxr_model/_build.py' in DOCKERFILE
    (tmp_path / "cxr_model" / "_build.py").write_text('COMMIT = "0123456789ab"\n')
    probe = "from cxr_model.checkpoint import code_version; print(code_version())"
    env = {"PATH": "/nonexistent", "PYTHONPATH": str(tmp_path)}  # no git to ask
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("+g0123456789ab")


def base_guard() -> str:
    """The Dockerfile's check of the base reference, as the shell RUN line it is."""
    start = DOCKERFILE.index('RUN case "$RAY_IMAGE"')
    return DOCKERFILE[start + len("RUN ") : DOCKERFILE.index("esac", start) + len("esac")].replace("\\\n", "\n")


def test_the_build_refuses_a_base_not_pinned_by_digest():
    """A re-pushed tag would change the image unseen: only tag@sha256:<64 hex> gets past the check."""
    tag = re.search(r"^ARG RAY_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE).group(1)

    def build_step(reference: str) -> int:
        return subprocess.run(["sh", "-c", base_guard()], env={"RAY_IMAGE": reference}, capture_output=True).returncode

    assert build_step(tag) != 0  # the default alone does not build
    assert build_step(f"{tag}@sha256:{'ab12' * 8}") != 0  # a truncated digest
    assert build_step(f"{tag}@sha256:{'0123456789abcdef' * 4}") == 0
    # The pin script reads the same tag, and its shell is valid; the build command in the README uses its lock.
    pin = ROOT / "scripts" / "pin_base_image.sh"
    assert subprocess.run(["bash", "-n", str(pin)]).returncode == 0
    read = re.search(r"^tag=\$\((.*)\)$", pin.read_text(), re.MULTILINE).group(1)
    assert subprocess.run(["sh", "-c", read], cwd=ROOT, capture_output=True, text=True).stdout.strip() == tag
    assert "--build-arg RAY_IMAGE=$(cat k8s/base-image.lock)" in (ROOT / "README.md").read_text()
