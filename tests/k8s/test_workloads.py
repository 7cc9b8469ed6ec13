"""What each workload runs: the training and scoring jobs' and the DICOM gateway's commands, parsed
by the real parsers, against the volumes, resources and settings their manifests give them."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from tests.k8s.conftest import by_kind, pod_specs
from tests.k8s.manifests import containers, secret_files
from training.config import add_train_arguments


def test_training_job_runs_cxr_train_with_flags_it_accepts(overlay):
    name, docs = overlay
    (job,) = [d for d in by_kind(docs, "RayJob") if d["metadata"]["name"] == "cxr-train"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    commands = [shlex.split(part) for part in job["spec"]["entrypoint"].split("&&")]
    train = next(c for c in commands if c[:2] == ["cxr", "train"])
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_train_arguments(parser)
    args = parser.parse_args(train[2:])
    assert args.output_dir.startswith("/mnt/cxr/")  # the shared volume every pod mounts
    if name == "gpu":  # then the floors, and the copy to the models volume on success
        from training.promote import register_promote

        subparsers = argparse.ArgumentParser().add_subparsers()
        register_promote(subparsers)
        promote = next(c for c in commands if "promote" in c)
        promote = promote[promote.index("cxr") : promote.index("||")]  # a refusal does not fail the job
        promoted = subparsers.choices["promote"].parse_args(promote[2:])
        assert promoted.checkpoint == Path(args.output_dir) / "checkpoint" and promoted.serve_config is None
        assert str(promoted.models_dir).startswith("/mnt/cxr/")
    mounts = {m["mountPath"] for c in containers(job) for m in c.get("volumeMounts", [])}
    assert "/mnt/cxr" in mounts
    (claim,) = by_kind(docs, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "cxr-data"


def test_the_archive_scoring_job_runs_cxr_score_as_placed(overlay):
    from scoring.cli import get_args_parser

    name, docs = overlay
    (job,) = [d for d in by_kind(docs, "RayJob") if d["metadata"]["name"] == "cxr-score"]
    spec = job["spec"]
    command = shlex.split(spec["entrypoint"])
    assert command[:2] == ["cxr", "score"]
    args = get_args_parser().parse_args(command[2:])
    assert all(p.startswith("/mnt/cxr/") for p in (args.input, args.checkpoint, args.output))
    # Every actor fits a worker: one GPU each in production, and its CPUs within the pod's.
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
    assert args.gpu == (name == "gpu") and (not args.gpu or args.actors <= group["maxReplicas"] * gpus)
    assert args.cpus_per_actor <= float(container["resources"]["limits"]["cpu"])
    for pod in pod_specs(job)[:2]:  # the head and the workers (not the submitter)
        (container,) = pod["containers"]
        assert "/mnt/cxr" in {m["mountPath"] for m in container.get("volumeMounts", [])}
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        files = secret_files(pod, container)
        if args.save:  # into the service's MongoDB, the URI a file where CXR_SECRETS_DIR says
            assert files == {env["CXR_SECRETS_DIR"]: {"CXR_MONGODB_URI": ("cxr-mongodb", "uri")}}
        else:  # cpu-dev has no MongoDB outside the app's own pod
            assert not files and "CXR_MONGODB_URI" not in env
    assert args.save == (name == "gpu")


def test_the_dicom_gateway_runs_cxr_gateway_with_its_own_spool_and_key(overlay, monkeypatch):
    from gateway.cli import add_gateway_arguments
    from gateway.delivery import Destination

    _, docs = overlay
    (gateway,) = [d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"] == "cxr-gateway"]
    (service,) = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "cxr-gateway"]
    (config,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "cxr-gateway"]
    (rayservice,) = by_kind(docs, "RayService")
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:2] == ["cxr", "gateway"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_gateway_arguments(parser)
    args = parser.parse_args(container["command"][2:])
    assert args.service_url == f"http://{rayservice['metadata']['name']}-serve-svc:8000"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert args.spool in mounts and {t["metadata"]["name"] for t in gateway["spec"]["volumeClaimTemplates"]} == {
        mounts[args.spool]["name"]
    }  # every pod its own durable spool
    key_mount = str(Path(args.api_key_file).parent)
    assert mounts[key_mount]["readOnly"] is True
    assert any(v["name"] == mounts[key_mount]["name"] and "secret" in v for v in pod["volumes"])
    settings = config["data"]
    from gateway.settings import GatewaySettings

    for name, value in settings.items():  # every key is a setting (a misspelt one would be ignored)
        assert name.removeprefix("CXR_GATEWAY_").lower() in GatewaySettings.model_fields, name
        monkeypatch.setenv(name, value)
    loaded = GatewaySettings()  # and every value parses, as the pod reads it
    assert loaded.send_to == json.loads(settings["CXR_GATEWAY_SEND_TO"])
    assert loaded.stow_to == json.loads(settings["CXR_GATEWAY_STOW_TO"])
    assert json.loads(settings["CXR_GATEWAY_ALLOW_AE"])  # never an open gateway
    assert all(Destination.parse(d) for d in json.loads(settings["CXR_GATEWAY_SEND_TO"]))
    assert int(settings["CXR_GATEWAY_MAX_SPOOL_BYTES"]) < 20 * 1024**3  # below the volume's size
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["port"] == args.port and container_ports["dicom"] == args.port
    assert container_ports["metrics"] == args.metrics_port > 0
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"].items()
    for monitor in by_kind(docs, "PodMonitor"):  # where the overlay has one (not cpu-dev), it scrapes the gateway
        assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels
        assert "metrics" in {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    assert service["spec"]["selector"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "CXR_MONGODB_URI" not in json.dumps(gateway)  # the gateway reaches the service, not the database
