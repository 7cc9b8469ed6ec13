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


SECRETS = {
    "CXR_MONGODB_URI": "mongodb://app:s3cret-password@db.example:27017/",
    "CXR_SESSION_SECRET": "session-secret-from-the-k8s-secret-0123",
    "CXR_PSEUDONYM_KEY": "pseudonym-key-from-the-k8s-secret-4567",
}


def test_secrets_set_where_the_app_is_built_are_not_passed_to_deployments(monkeypatch):
    """Serve stores deployment arguments in the GCS (Redis, with fault tolerance): none of the
    environment's secrets may be among them, in any form the settings object serialises to."""
    import pickle

    from serve.settings import ServeSettings

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    passed = ServeSettings().for_deployments()
    blob = pickle.dumps(passed) + passed.model_dump_json().encode()
    for value in SECRETS.values():
        assert value.encode() not in blob
    assert passed.mongodb_uri is None and passed.session_secret == passed.pseudonym_key == ""


def test_each_replica_reads_its_secrets_from_its_own_environment(monkeypatch):
    from serve.settings import MissingSecret, ServeSettings

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    passed = ServeSettings().for_deployments()
    own = passed.with_own_secrets()
    assert (own.mongodb_uri, own.session_secret, own.pseudonym_key) == tuple(SECRETS.values())
    # A node without the Secret mounted fails loudly, never runs with blank keys.
    for name in SECRETS:
        monkeypatch.delenv(name)
    with pytest.raises(MissingSecret, match="CXR_SESSION_SECRET"):
        passed.with_own_secrets()


def test_without_any_secret_the_builder_draws_keys_every_replica_shares(monkeypatch):
    """The local demo: no Secret anywhere; one draw at build time, passed to every replica, and a
    pod's own Secret still wins over the draw (the app built on a node without one)."""
    from serve.settings import ServeSettings

    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)
    passed = ServeSettings().for_deployments()
    assert len(passed.session_secret) >= 32 and passed.session_secret != passed.pseudonym_key
    assert passed.with_own_secrets().session_secret == passed.session_secret
    monkeypatch.setenv("CXR_SESSION_SECRET", SECRETS["CXR_SESSION_SECRET"])
    assert passed.with_own_secrets().session_secret == SECRETS["CXR_SESSION_SECRET"]


def test_a_replica_reads_its_secrets_from_files_where_the_secret_is_mounted(tmp_path, monkeypatch):
    """Kubernetes mounts the Secret's keys as files named like the variables: read there, they stay
    out of the environment every Ray worker on the node inherits; a variable still wins."""
    from serve.settings import MissingSecret, ServeSettings
    from tests.serve.helpers import mount_secret

    folder = tmp_path / "secrets"
    mount_secret(folder, SECRETS)
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CXR_SECRETS_DIR", str(folder))
    passed = ServeSettings().for_deployments()  # the builder on this node: nothing passed down
    assert passed.mongodb_uri is None and SECRETS["CXR_SESSION_SECRET"] not in passed.model_dump_json()
    own = passed.with_own_secrets()
    assert (own.mongodb_uri, own.session_secret, own.pseudonym_key) == tuple(SECRETS.values())
    monkeypatch.setenv("CXR_MONGODB_URI", "mongodb://from-the-variable:27017")
    assert passed.with_own_secrets().mongodb_uri == "mongodb://from-the-variable:27017"
    # A node that names the folder without the Secret mounted there (the head, the GPU nodes) has none.
    monkeypatch.delenv("CXR_MONGODB_URI")
    monkeypatch.setenv("CXR_SECRETS_DIR", str(tmp_path / "not-mounted"))
    assert ServeSettings().mongodb_uri is None
    with pytest.raises(MissingSecret, match="CXR_SECRETS_DIR"):
        passed.with_own_secrets()
