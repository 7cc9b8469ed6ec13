"""Archive scoring (`cxr score` on Ray Data) against the model-only ceiling, measured side by side.

    .venv/bin/python bench/archive_scoring.py [--checkpoint runs/demo/run/checkpoint] [--images 800]

1. Ceiling: the model alone on preprocessed tensors in fresh processes, all cores busy, best of
   (one process x all threads | one single-thread process per core) x batch (bench/model_only.py).
2. Archive: the shipped `cxr score` path on a manifest of real radiographs from ../shared (generated
   pictures when it is absent, and the output says so): read, decode, image checks, gates, model,
   Parquet parts, on a local Ray cluster with this machine's cores, in both actor layouts.
Prints each rate and archive / ceiling; the goal is >= 0.9. The archive rate is the marginal one:
an archive of a quarter of the files and the whole one are scored, and the difference divided by
the difference in time, so that the fixed start-up (Ray Data planning, each actor loading the model
once) drops out, as it does from an archive of millions.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from model_only import model_ceiling  # noqa: E402

REAL_SAMPLE = ROOT.parent / "shared" / "data" / "cxr-real-sample"
GOAL = 0.9


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        default=str(ROOT / "runs" / "demo" / "run" / "checkpoint"),
        help="the checkpoint to score with (default: the demo model scripts/run.sh serves)",
    )
    parser.add_argument("--images", type=int, default=800, help="files in the archive (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="cxr score --batch-size (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=8, help="per ceiling configuration (default: %(default)s)")
    return parser


def archive_manifest(folder: Path, count: int) -> tuple[Path, str]:
    """A manifest of ``count`` files: real radiographs when ../shared has them (repeated if needed)."""
    if REAL_SAMPLE.is_dir():
        files, source = sorted(REAL_SAMPLE.glob("*/images/*.png")), "real radiographs from ../shared"
    else:
        from training.synthetic import make_demo_dataset

        make_demo_dataset(folder / "generated", per_class=max(1, count // 4))
        files, source = sorted((folder / "generated").rglob("*.png")), "GENERATED pictures (../shared absent)"
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path"])
        for i in range(count):
            # A repeated file gets its own path (a symlink), as a distinct archive entry would.
            path = files[i % len(files)]
            if i >= len(files):
                path = folder / f"repeat-{i}{path.suffix}"
                path.symlink_to(files[i % len(files)])
            writer.writerow([str(path)])
    return manifest, source


def score(manifest: Path, checkpoint: str, output: Path, actors: int, cpus: int, batch: int, count: int) -> dict:
    """`cxr score` on the manifest's first ``count`` files."""
    from scoring.cli import get_args_parser as score_parser
    from scoring.cli import score_archive

    lines = manifest.read_text().splitlines()
    subset = output.with_suffix(".csv")
    subset.write_text("\n".join(lines[: count + 1]) + "\n")
    args = score_parser().parse_args(
        ["--input", str(subset), "--checkpoint", checkpoint, "--output", str(output)]
        + ["--actors", str(actors), "--cpus-per-actor", str(cpus), "--batch-size", str(batch)]
    )
    return score_archive(args)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "model_card.json").is_file():
        raise SystemExit(f"no checkpoint at {checkpoint}: run `cxr demo` (or bash scripts/run.sh) first")
    from cxr_model.engine import load_engine

    engine = load_engine(str(checkpoint))  # the runtime `cxr score` picks, as the service does
    runtime = "onnxruntime fp32" if engine.runtime == "onnx" else "torch fp32"
    cores = os.cpu_count() or 1
    print(f"checkpoint {checkpoint} ({engine.card.backbone}, {engine.card.preprocess_spec.input_size} px), "
          f"runtime {engine.runtime}, {cores} cores")  # fmt: skip
    print("1. model-only ceiling (preprocessed tensors, fresh processes):")
    ceiling = model_ceiling(checkpoint, [runtime], args.seconds)
    print(f"   ceiling: {ceiling.rate:.2f} img/s ({ceiling.how})")

    import ray

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    best = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        manifest, source = archive_manifest(Path(tmp), args.images)
        print(f"2. cxr score on {args.images} files: {source}")
        for actors, cpus in ((1, cores), (cores, 1)):
            # Two archives, a quarter and the whole: the start-up (actors loading the model, the
            # pipeline filling) costs both the same, so the difference is the rate an archive of
            # any size approaches.
            runs = {}
            for count in (args.images // 4, args.images):
                started = time.perf_counter()
                out = Path(tmp) / f"out-{actors}-{count}"
                summary = score(manifest, str(checkpoint), out, actors, cpus, args.batch_size, count)
                runs[count] = (time.perf_counter() - started, summary)
            (small_s, _), (whole_s, summary) = runs[args.images // 4], runs[args.images]
            marginal = (args.images - args.images // 4) / max(whole_s - small_s, 1e-9)
            best = max(best, marginal)
            print(
                f"   {actors} actor(s) x {cpus} CPU: {args.images} files in {whole_s:.1f} s "
                f"({args.images / whole_s:.2f} img/s end to end, start-up included), "
                f"{args.images // 4} in {small_s:.1f} s; marginal {marginal:6.2f} img/s, "
                f"ratio to ceiling {marginal / ceiling.rate:.2f}; statuses "
                + ", ".join(f"{k} {v}" for k, v in summary.items() if k in ("scored", "out_of_scope", "error"))
            )
    ray.shutdown()
    ratio = best / ceiling.rate
    print(f"archive / model-only ceiling: {ratio:.2f} (goal >= {GOAL}) -> {'MET' if ratio >= GOAL else 'MISSED'}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
