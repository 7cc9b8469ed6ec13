"""The Ray Serve application: ``serve run serve_config.yaml`` imports ``serve.app:build_app``.

A typed builder (no `from __future__ import annotations` here: Serve reads the
annotation object to find AppArgs). Serve validates the YAML's ``args`` against ``AppArgs``
(unknown keys are errors), and the ``CXR_*`` environment is read here, once,
and passed down to every deployment.
"""

from pathlib import Path

from pydantic import BaseModel, ConfigDict
from ray.serve import Application

from serve.classifier import BatchedClassifier
from serve.ingress import Ingress
from serve.settings import ServeSettings
from serve.store import ResultStore


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str = ""  # the lowest of three sources: see serve.settings for the precedence
    device: str = "auto"
    runtime: str = "auto"  # auto | torch | onnx; auto = ONNX Runtime on CPU when a verified export exists
    compile: bool = False  # torch.compile the torch runtime (GPU deployments)
    precision: str = "fp32"  # fp32 | int8: the opt-in quantised ONNX export (`cxr export --int8`), CPU only


def initial_checkpoint(settings: ServeSettings, args: AppArgs) -> str:
    """``CXR_CHECKPOINT``, else ``args.checkpoint``; a ``user_config.checkpoint`` then rolls over both
    in ``BatchedClassifier.reconfigure`` (the whole precedence is written in ``serve.settings``)."""
    return resolve_checkpoint(settings.checkpoint or args.checkpoint)


def resolve_checkpoint(value: str) -> str:
    if not value:
        raise ValueError("no checkpoint: set args.checkpoint in serve_config.yaml or CXR_CHECKPOINT")
    path = Path(value).expanduser().resolve()
    if not (path / "model_card.json").is_file():
        raise ValueError(f"{value} is not a checkpoint directory (no model_card.json)")
    return str(path)


def build_app(args: AppArgs) -> Application:
    settings = ServeSettings().for_deployments()
    classifier = BatchedClassifier.bind(
        initial_checkpoint(settings, args),
        args.device,
        args.runtime,
        args.compile,
        args.precision,
        drift_window=settings.drift_window,
        drift_min_window=settings.drift_min_window,
    )
    store = ResultStore.bind(settings)
    return Ingress.bind(classifier, store, settings)
