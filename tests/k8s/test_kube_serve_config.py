"""``scripts/kube_serve_config.py`` merges, never replaces: every field of serve_config.yaml reaches
every Kubernetes variant unless the variant lists it as deliberately overridden, so a model roll
written in serve_config.yaml (``user_config.checkpoint``) reaches production."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("kube_serve_config", ROOT / "scripts" / "kube_serve_config.py")
kube = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kube)
SOURCE = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
VARIANTS = {"gpu": kube.gpu, "cpu_dev": kube.cpu_dev}


def with_value(config: dict, path: str, value) -> dict:
    """A copy of ``config`` with the leaf at flat ``path`` (as ``kube.flatten`` names it) set to ``value``."""
    config = copy.deepcopy(config)
    head, *rest = path.split(".")
    app = config["applications"][0]
    names = {d["name"]: d for d in app["deployments"]}
    node = app if head == "app" else names.get(head) or config
    keys = rest if (head == "app" or head in names) else [head, *rest]
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return config


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", sorted(kube.flatten(SOURCE)))
def test_every_field_of_serve_config_reaches_the_variant_or_is_a_listed_override(variant, path):
    sentinel = "changed-in-serve_config.yaml"
    rendered = kube.flatten(VARIANTS[variant](with_value(SOURCE, path, sentinel)))
    if path in kube.OVERRIDES[variant]:
        assert rendered.get(path) != sentinel, f"{path} is listed as overridden in {variant} but is not"
    else:
        assert rendered.get(path) == sentinel, f"{path} changed in serve_config.yaml does not reach {variant}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_model_roll_and_a_new_field_reach_every_variant(variant):
    rolled = copy.deepcopy(SOURCE)
    classifier = next(d for d in rolled["applications"][0]["deployments"] if d["name"] == "BatchedClassifier")
    classifier["user_config"]["checkpoint"] = "/mnt/cxr/models/v2026.12"
    classifier["autoscaling_config"]["look_back_period_s"] = 45
    rendered = kube.flatten(VARIANTS[variant](rolled))
    assert rendered["BatchedClassifier.user_config.checkpoint"] == "/mnt/cxr/models/v2026.12"
    assert rendered["BatchedClassifier.autoscaling_config.look_back_period_s"] == 45


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_listed_override_names_a_field_that_exists(variant):
    known = set(kube.flatten(SOURCE)) | set(kube.flatten(VARIANTS[variant](SOURCE)))
    assert kube.OVERRIDES[variant] <= known
