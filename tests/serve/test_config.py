"""serve_config.yaml: valid for Ray Serve, no key Serve would silently ignore, typed builder args."""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import ValidationError

from serve.app import AppArgs, resolve_checkpoint
from serve.config_check import check_file, unknown_keys
from tests.serve.conftest import ROOT

CONFIG = yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def test_shipped_config_has_only_known_keys():
    assert check_file(ROOT / "serve_config.yaml")["applications"][0]["import_path"] == "serve.app:build_app"


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda c: c["http_options"].update(prot=8000), "http_options.prot"),
        (
            lambda c: c["applications"][0]["deployments"][0].update(max_ongoing_request=4),
            "applications[0].deployments[0].max_ongoing_request",
        ),
        (
            lambda c: c["applications"][0]["deployments"][0]["autoscaling_config"].update(max_replica=9),
            "applications[0].deployments[0].autoscaling_config.max_replica",
        ),
        (
            lambda c: c["applications"][0]["deployments"][1]["ray_actor_options"].update(num_cpu=1),
            "applications[0].deployments[1].ray_actor_options.num_cpu",
        ),
    ],
)
def test_misspelt_keys_are_named(tmp_path, mutate, where):
    config = copy.deepcopy(CONFIG)
    mutate(config)
    assert unknown_keys(config) == [where]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=where.replace("[", r"\[").replace("]", r"\]")):
        check_file(path)


def test_builder_args_are_typed(tiny_checkpoint, tmp_path):
    args = AppArgs(**CONFIG["applications"][0]["args"])
    assert args.runtime == "auto" and args.compile is False
    with pytest.raises(ValidationError):
        AppArgs(checkpoint="x", devcie="cpu")
    assert resolve_checkpoint(str(tiny_checkpoint)) == str(tiny_checkpoint.resolve())
    with pytest.raises(ValueError, match="not a checkpoint"):
        resolve_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="CXR_CHECKPOINT"):
        resolve_checkpoint("")


def test_deployments_in_the_config_are_the_app_s_deployments():
    from serve.app import build_app

    names = {d["name"] for d in CONFIG["applications"][0]["deployments"]}
    assert names == {"BatchedClassifier", "ResultStore", "Ingress"}
    from serve.classifier import BatchedClassifier
    from serve.ingress import Ingress
    from serve.store import ResultStore

    assert {BatchedClassifier.name, ResultStore.name, Ingress.name} == names
    assert callable(build_app)
