"""``cxr promote``: a checkpoint reaches serving only when its card meets every floor; a refusal
copies and changes nothing; a promotion is carried by scripts/kube_serve_config.py into every
Kubernetes variant."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxr_model.checkpoint import read_card, write_card

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "test": {"n": 200, "accuracy": 0.91, "macro_f1": 0.88, "sensitivity": {"COVID-19": 0.94, "Normal": 0.9}},
}
RATES = {"chest_radiographs": {"test": {"false_rejection_rate": 0.01}}}


@pytest.fixture
def candidate(tiny_checkpoint, tmp_path) -> Path:
    directory = tmp_path / "run" / "checkpoint"
    shutil.copytree(tiny_checkpoint, directory)
    card = read_card(directory)
    card.metrics = {**card.metrics, **GOOD}
    card.scope = {**card.scope, "rates": RATES}
    write_card(card, directory)
    return directory


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "serve_config.yaml"
    shutil.copy(ROOT / "serve_config.yaml", path)
    return path


def cxr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("cxr")), *args], capture_output=True, text=True, timeout=120
    )


def served_checkpoint(config: Path) -> str | None:
    deployments = yaml.safe_load(config.read_text())["applications"][0]["deployments"]
    classifier = next(d for d in deployments if d["name"] == "BatchedClassifier")
    return (classifier.get("user_config") or {}).get("checkpoint")


def test_a_checkpoint_meeting_every_floor_is_copied_and_served_and_reaches_kubernetes(candidate, config, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    before = config.read_text()
    result = cxr("promote", str(candidate), "--models-dir", str(models), "--serve-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    card = read_card(candidate)
    target = models / f"{card.name}-{card.version}"
    assert read_card(target).weights_sha256 == card.weights_sha256
    assert served_checkpoint(config) == str(target)
    # Only that line is new: every comment and setting of the file is kept.
    assert [line for line in config.read_text().splitlines() if line not in before.splitlines()] == [
        f"          checkpoint: {target}"
    ]
    # The roll reaches the GPU variant too (scripts/kube_serve_config.py merges user_config).
    spec = importlib.util.spec_from_file_location("kube", ROOT / "scripts" / "kube_serve_config.py")
    kube = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kube)
    rendered = kube.flatten(kube.gpu(yaml.safe_load(config.read_text())))
    assert rendered["BatchedClassifier.user_config.checkpoint"] == str(target)
    # Promoting the same checkpoint again changes nothing.
    assert cxr("promote", str(candidate), "--models-dir", str(models), "--serve-config", str(config)).returncode == 0
    assert served_checkpoint(config) == str(target) and len(list(models.iterdir())) == 1


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda c: c.metrics["test"].update(accuracy=0.80), "test accuracy 0.800 is below the floor"),
        (lambda c: c.metrics["test"].update(macro_f1=0.70), "test macro-F1 0.700 is below the floor"),
        (lambda c: c.metrics["test"]["sensitivity"].update({"COVID-19": 0.85}), "sensitivity for COVID-19 0.850"),
        (lambda c: c.metrics["test"].pop("sensitivity"), "sensitivity for COVID-19 not recorded"),
        (lambda c: c.scope["rates"]["chest_radiographs"]["test"].update(false_rejection_rate=0.12), "refuses 0.120"),
        (lambda c: c.metrics.pop("test"), "no test-split evaluation"),
    ],
)
def test_a_checkpoint_missing_a_floor_is_refused_and_nothing_changes(candidate, config, tmp_path, change, reason):
    card = read_card(candidate)
    change(card)
    write_card(card, candidate)
    models = tmp_path / "models"
    models.mkdir()
    before = config.read_text()
    result = cxr("promote", str(candidate), "--models-dir", str(models), "--serve-config", str(config))
    assert result.returncode == 2 and reason in result.stdout, result.stdout
    assert list(models.iterdir()) == [] and config.read_text() == before


def test_altered_weights_are_refused(candidate, config, tmp_path):
    with open(candidate / "weights.pt", "ab") as handle:
        handle.write(b"\0")
    models = tmp_path / "models"
    models.mkdir()
    result = cxr("promote", str(candidate), "--models-dir", str(models), "--serve-config", str(config))
    assert result.returncode == 2 and "do not match the card's sha256" in result.stdout
    assert list(models.iterdir()) == []


def test_stricter_floors_from_the_command_line(candidate, config, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    result = cxr(
        "promote", str(candidate), "--models-dir", str(models), "--serve-config", str(config),
        "--min-sensitivity", "COVID-19=0.95", "--min-sensitivity", "Normal=0.5",
    )  # fmt: skip
    assert result.returncode == 2 and "sensitivity for COVID-19 0.940 is below the floor 0.950" in result.stdout


def test_on_the_cluster_it_checks_and_copies_and_names_the_path_to_serve(candidate, tmp_path, monkeypatch):
    """The training RayJob promotes where the repository is not: --serve-config '' copies only, and
    says which path to put in serve_config.yaml; no serve config is read or written."""
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.chdir(tmp_path)  # no serve_config.yaml here: reading one would fail
    result = cxr("promote", str(candidate), "--models-dir", str(models), "--serve-config", "")
    assert result.returncode == 0, result.stdout + result.stderr
    (target,) = models.iterdir()
    assert read_card(target).weights_sha256 == read_card(candidate).weights_sha256
    assert f"user_config.checkpoint in\nserve_config.yaml to {target}" in result.stdout
    assert not (tmp_path / "serve_config.yaml").exists()
