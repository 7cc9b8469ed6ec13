"""``cxr score``: score a whole archive on Ray Data, the service's model path without HTTP.

    cxr score --input DIR|manifest.csv --checkpoint CKPT --output results.parquet

Ray Data reads the file list in blocks and ``map_batches`` runs them through a
pool of ``ArchiveScorer`` actors (each loads the model once); the driver
writes each finished batch as one Parquet part and shows a progress bar. Run it
again with the same ``--output`` after an interruption: finished files are
skipped. On KubeRay it runs as a RayJob (``k8s/scoring/``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    flag = parser.add_argument
    flag(
        "--input",
        required=True,
        help="a folder of PNG/JPEG/DICOM files, or a manifest .csv with a path column (required)",
    )
    flag("--checkpoint", required=True, help="checkpoint directory: weights, model card, gates (required)")
    flag("--output", required=True, help="results folder, e.g. results.parquet; created, reused to resume (required)")
    flag("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")
    flag(
        "--runtime", default="auto", choices=("auto", "torch", "onnx"), help="inference runtime (default: %(default)s)"
    )
    flag(
        "--precision",
        default="fp32",
        choices=("fp32", "int8"),
        help="int8 needs `cxr export --int8` (default: %(default)s)",
    )
    flag("--gpu", action="store_true", help="one GPU per actor (default: CPU only)")
    flag(
        "--actors",
        type=int,
        default=0,
        help="scoring actors in the pool; 0 = one per GPU with --gpu, else one per CPU (measured fastest on CPU: "
        "single-threaded sessions side by side) (default: %(default)s)",
    )
    flag(
        "--cpus-per-actor",
        type=float,
        default=0,
        help="logical CPUs per actor, also its inference threads (at least 1); 0 = the cluster's CPUs / actors "
        "(default: %(default)s)",
    )
    flag("--batch-size", type=int, default=32, help="files per model batch (default: %(default)s)")
    flag("--write-every", type=int, default=256, help="rows per Parquet part, the resume step (default: %(default)s)")
    flag(
        "--save",
        action="store_true",
        help="also store each scored file as a prediction record in MongoDB (default: off, Parquet only)",
    )
    flag("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a new local cluster)")


def register_score(subparsers) -> None:
    parser = subparsers.add_parser("score", help="score an archive of images on Ray Data into Parquet")
    add_score_arguments(parser)
    parser.set_defaults(func=_score)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr score", description=__doc__.splitlines()[0])
    add_score_arguments(parser)
    return parser


def _saver(args):
    """A factory the actors call: each opens its own pymongo client (clients are not picklable)."""
    if not args.save:
        return None
    from serve.settings import ServeSettings

    settings = ServeSettings()
    uri = settings.mongodb_uri
    if not uri:  # the embedded server the service uses on this cluster (serve.embedded_db)
        import ray

        from serve.embedded_db import embedded_mongodb

        uri = ray.get(embedded_mongodb(settings.embedded_db_dir, settings.embedded_db_port).uri.remote())
    database, timeout = settings.mongodb_database, settings.mongodb_timeout_ms

    def build():
        from scoring.records import ArchiveRecords

        return ArchiveRecords(uri, database, timeout)

    return build


def score_archive(args) -> dict:
    """Score every unfinished input; returns counts by status (and timing) for this run."""
    import ray
    from tqdm import tqdm

    from cxr_model.checkpoint import read_card
    from scoring.archive import ResultsFolder, list_inputs
    from scoring.scorer import ArchiveScorer

    card = read_card(args.checkpoint)
    run = {"name": card.name, "version": card.version, "weights_sha256": card.weights_sha256}
    results = ResultsFolder(args.output, run, card.labels)
    inputs = list_inputs(args.input)
    done = results.finished()
    pending = [item for item in inputs if item["path"] not in done]
    print(f"{len(inputs)} files: {len(inputs) - len(pending)} already scored, {len(pending)} to score")
    if not pending:
        return {"scored_now": 0}
    if not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=False)
    # Our bar counts files; Ray Data's own bars and INFO lines count blocks and operators.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    resources = ray.cluster_resources()
    actors = args.actors or max(1, int(resources.get("GPU" if args.gpu else "CPU", 1)))
    cpus = args.cpus_per_actor or max(1, int(resources.get("CPU", 1)) // actors)
    results.start()
    dataset = ray.data.from_items(pending, override_num_blocks=max(1, len(pending) // args.batch_size)).map_batches(
        ArchiveScorer,
        fn_constructor_kwargs={
            "checkpoint": str(Path(args.checkpoint).resolve()),
            "device": "cuda" if args.gpu else args.device,
            "runtime": args.runtime,
            "precision": args.precision,
            "threads": max(1, int(cpus)),
            "saver": _saver(args),
        },
        batch_size=args.batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=cpus,
        num_gpus=1 if args.gpu else 0,
    )
    counts, started = Counter(), time.perf_counter()
    with tqdm(total=len(pending), unit="img", desc="scoring", mininterval=2) as bar:
        for batch in dataset.iter_batches(batch_size=args.write_every, batch_format="pyarrow"):
            results.write(batch)
            counts.update(batch["status"].to_pylist())
            bar.update(batch.num_rows)
    elapsed = time.perf_counter() - started
    return dict(counts) | {"scored_now": len(pending), "seconds": elapsed}


def _score(args) -> int:
    from scoring.archive import ScoringError

    try:
        summary = score_archive(args)
    except ScoringError as exc:
        raise SystemExit(f"cxr score: {exc}") from None
    if summary["scored_now"]:
        rate = summary["scored_now"] / summary["seconds"]
        counts = ", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("scored_now", "seconds"))
        print(f"{summary['scored_now']} files in {summary['seconds']:.1f} s ({rate:.1f} img/s): {counts}")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(_score(get_args_parser().parse_args()))
