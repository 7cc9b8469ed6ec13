"""``cxr train``: scan -> split -> initial weights -> stage 1 -> stage 2 -> evaluate.

Everything lands under the output directory::

    config.yaml            the final configuration
    split_manifest.json    entries with sha256 and split, skipped files, counts
    init/                  the initial network (pretrained or seeded random)
    ray/stage1, ray/stage2 Ray Train run storage (per-epoch checkpoints)
    stage1/best, stage2/best  each stage's best checkpoint by val macro-F1
    checkpoint/            the final checkpoint (weights.pt + model_card.json)
    evaluation/            the test-split report, next to the checkpoint
    curves.png             loss and metric curves of both stages

Re-running with the same output directory resumes: finished stages are kept,
and an interrupted stage continues from its last epoch checkpoint (Ray Train
restores the run of the same name and storage path).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cxr_model.checkpoint import CARD_FILE, ModelCard, load_network, read_card, save_checkpoint
from cxr_model.classifier import probabilities_from_logits
from cxr_model.drift import build_reference
from cxr_model.labels import MULTILABEL
from cxr_model.model_card_md import render_model_card
from cxr_model.network import build_model
from cxr_model.preprocessing import PreprocessSpec
from training.config import TrainConfig, save_config
from training.evaluate import evaluate_checkpoint, predict_entries
from training.layouts import scan_dataset
from training.loop import TRAIN_STATE_FILE, train_stage_loop
from training.metrics import classification_metrics, fit_temperature, tune_thresholds
from training.plots import plot_training_curves
from training.scope import fit_and_measure
from training.splits import build_manifest, cap_per_label, load_manifest, save_manifest, split_entries

STAGES = ("stage1", "stage2")


def prepare_data(cfg: TrainConfig, out: Path) -> dict:
    path = out / "split_manifest.json"
    if path.is_file():
        return load_manifest(path)
    dataset = cap_per_label(scan_dataset(cfg.data_dir, cfg.layout), cfg.max_per_label, cfg.split_seed)
    manifest = build_manifest(dataset, tuple(cfg.split_fractions), cfg.split_seed)
    save_manifest(manifest, path)
    return manifest


def _print_data_summary(manifest: dict) -> None:
    print(
        f"data: {manifest['layout']} layout, {len(manifest['entries'])} images, "
        f"{len(manifest['skipped'])} skipped, {manifest['duplicate_files']} duplicate files"
    )
    for split, counts in manifest["counts"].items():
        print(f"  {split:5s} " + ", ".join(f"{label}: {counts.get(label, 0)}" for label in manifest["labels"]))
    for item in manifest["skipped"][:20]:
        print(f"  skipped {item['path']}: {item['reason']}")
    if len(manifest["skipped"]) > 20:
        print(f"  ... and {len(manifest['skipped']) - 20} more (see split_manifest.json)")


def initial_checkpoint(cfg: TrainConfig, manifest: dict, out: Path) -> Path:
    """Build the starting network once on the driver, so every worker starts identical."""
    directory = out / "init"
    if (directory / CARD_FILE).is_file():
        return directory
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, len(manifest["labels"]), cfg.weights)
    version = cfg.model_version or datetime.now(timezone.utc).strftime("%Y.%m.%d-%H%M%S")
    card = ModelCard(
        name=cfg.model_name or f"cxr-{cfg.backbone}" + ("-synthetic-demo" if cfg.synthetic_demo else ""),
        version=version,
        backbone=cfg.backbone,
        task=manifest["task"],
        labels=list(manifest["labels"]),
        thresholds=[0.5] * len(manifest["labels"]) if manifest["task"] == MULTILABEL else [],
        preprocessing=PreprocessSpec(input_size=cfg.image_size).to_dict(),
        training_config=cfg.to_dict(),
        data_manifest_sha256=manifest["sha256"],
        split_seed=cfg.split_seed,
        synthetic_demo=cfg.synthetic_demo,
    )
    if cfg.synthetic_demo:
        card.intended_use = (
            "SYNTHETIC DEMO MODEL trained on generated images: not for clinical use. " + card.intended_use
        )
    save_checkpoint(model, card, directory)
    return directory


def worker_cpus(cfg: TrainConfig) -> int:
    """``cpus_per_worker``, or (0) the cluster's CPUs shared equally: Ray gives each worker as many
    torch threads as CPUs, so a lone worker asking for 1 CPU would leave the other cores idle."""
    if cfg.cpus_per_worker:
        return cfg.cpus_per_worker
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // cfg.workers)


def run_stage(cfg: TrainConfig, stage: str, init: Path, out: Path) -> Path:
    best_dir = out / stage / "best"
    if (best_dir / CARD_FILE).is_file():
        print(f"[{stage}] already complete: {best_dir}")
        return best_dir
    gpu = {"GPU": 1} if cfg.gpu else {}
    trainer = TorchTrainer(
        train_stage_loop,
        train_loop_config={
            "train_config": cfg.to_dict(),
            "stage": stage,
            "init_checkpoint": str(init),
            "manifest_path": str(out / "split_manifest.json"),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.gpu, resources_per_worker={"CPU": worker_cpus(cfg), **gpu}
        ),
        run_config=RunConfig(
            name=stage,
            storage_path=str((out / "ray").resolve()),
            # Ray also always keeps the latest checkpoint, which resuming needs.
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_macro_f1", checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=2),
        ),
    )
    result = trainer.fit()
    best, _ = max(result.best_checkpoints, key=lambda pair: (pair[1]["val_macro_f1"], -pair[1]["epoch"]))
    with result.checkpoint.as_directory() as latest:
        history = torch.load(Path(latest) / TRAIN_STATE_FILE, map_location="cpu")["state"]["history"]
    staging = best_dir.with_name("best.partial")
    shutil.rmtree(staging, ignore_errors=True)
    with best.as_directory() as directory:
        shutil.copytree(directory, staging, ignore=shutil.ignore_patterns(TRAIN_STATE_FILE))
    (out / stage / "history.json").write_text(json.dumps(history, indent=1))
    staging.rename(best_dir)
    return best_dir


def finalize(cfg: TrainConfig, manifest: dict, out: Path) -> Path:
    """Final checkpoint from stage 2's best: thresholds tuned (multilabel), test report written."""
    model, card = load_network(out / "stage2" / "best")
    logits, y_true = predict_entries(
        model, card, Path(manifest["root"]), split_entries(manifest, "val"), cfg.eval_batch_size, logits=True
    )
    # Calibrate first: multi-label thresholds are tuned on the probabilities that will be served.
    card.calibration_temperature = fit_temperature(logits, y_true, card.task)
    probs = probabilities_from_logits(torch.from_numpy(logits), card.task, card.calibration_temperature).numpy()
    card.metrics["calibration"] = {
        "method": "temperature scaling on the validation split",
        "temperature": card.calibration_temperature,
        "val_ece_before": classification_metrics(
            y_true, probabilities_from_logits(torch.from_numpy(logits), card.task).numpy(), card.label_set
        )["ece"],
        "val_ece_after": classification_metrics(y_true, probs, card.label_set)["ece"],
    }
    if card.task == MULTILABEL:
        card.thresholds = tune_thresholds(y_true, probs)
    final = out / "checkpoint"
    card.scope, val_ratios = fit_and_measure(
        model, card, manifest, final, cfg.scope_false_rejection, cfg.scope_ood_per_kind, cfg.split_seed
    )
    # What served predictions are compared with, without ground truth (cxr_model.drift; the drift gauges).
    card.drift_reference = build_reference(card.labels, probs, val_ratios)
    card.created_at = ""
    save_checkpoint(model, card, final)
    test = split_entries(manifest, "test")
    if test:
        report = evaluate_checkpoint(
            final, Path(manifest["root"]), test, out / "evaluation", batch_size=cfg.eval_batch_size, split_name="test"
        )
        card.metrics["test"] = {
            k: report[k]
            for k in (
                "n",
                "accuracy",
                "accuracy_ci95",
                "macro_f1",
                "macro_f1_ci95",
                "macro_roc_auc",
                "ece",
                "low_confidence_rate",
            )
        }
        card.metrics["test"]["ece_before_calibration"] = report["calibration"]["ece_before"]
        # Per-label sensitivity (recall) on the test split: what `cxr promote` holds to its floors.
        card.metrics["test"]["sensitivity"] = {name: row["recall"] for name, row in report["per_class"].items()}
        card.created_at = ""
        save_checkpoint(model, card, final)
    save_config(cfg, final / "config.yaml")
    (final / "MODEL_CARD.md").write_text(render_model_card(read_card(final)))
    return final


def run_training(cfg: TrainConfig) -> Path:
    cfg.validate()
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    manifest = prepare_data(cfg, out)
    _print_data_summary(manifest)
    if not split_entries(manifest, "train") or not split_entries(manifest, "val"):
        raise ValueError("the split has no training or no validation images; add data or change split_fractions")
    if not ray.is_initialized():
        ray.init()
    init = initial_checkpoint(cfg, manifest, out)
    stage1 = run_stage(cfg, "stage1", init, out)
    run_stage(cfg, "stage2", stage1, out)
    histories = [json.loads((out / s / "history.json").read_text()) for s in STAGES]
    plot_training_curves(histories[0] + histories[1], out / "curves.png")
    final = finalize(cfg, manifest, out)
    print(f"final checkpoint: {final}")
    if (out / "evaluation" / "report.md").is_file():
        print(f"evaluation report: {out / 'evaluation' / 'report.md'}")
    return final
