"""``cxr data``, ``cxr train``, ``cxr evaluate`` and ``cxr demo`` (registered via entry points)."""

from __future__ import annotations

from pathlib import Path

DEMO_CONFIG = Path(__file__).with_name("demo_config.yaml")
# Spelt out rather than imported from training.layouts: `cxr --help` should not load torch.
LAYOUT_NAMES = "auto, kaggle, roboflow, csv or imagefolder"


def register_data(subparsers) -> None:
    parser = subparsers.add_parser("data", help="data set tools")
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    demo = data_sub.add_parser("make-demo", help="write a synthetic CXR-like data set (Kaggle layout)")
    demo.add_argument("out", help="output folder")
    demo.add_argument("--per-class", type=int, default=50, help="images per class (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the generator (default: %(default)s)")
    demo.add_argument(
        "--duplicates",
        type=int,
        default=0,
        help="byte-identical copies per class, to exercise de-duplication (default: %(default)s)",
    )
    demo.set_defaults(func=_make_demo)
    summary = data_sub.add_parser("summary", help="class distribution table and chart")
    summary.add_argument("data_dir", help="a labelled folder in any supported layout")
    summary.add_argument("--layout", default="auto", help=f"folder layout: {LAYOUT_NAMES} (default: %(default)s)")
    summary.add_argument("--chart", help="PNG path for the bar chart (default: none)")
    summary.set_defaults(func=_summary)


def _make_demo(args) -> int:
    from training.synthetic import make_demo_dataset

    counts = make_demo_dataset(args.out, args.per_class, args.seed, duplicates=args.duplicates)
    print(f"wrote {sum(counts.values())} synthetic images to {args.out}: {counts}")
    return 0


def _summary(args) -> int:
    from training.layouts import scan_dataset
    from training.plots import plot_class_distribution

    dataset = scan_dataset(args.data_dir, args.layout)
    names = list(dataset.label_set.names)
    splits = sorted({s.split for s in dataset.samples if s.split}) or ["all"]
    table = {split: {name: 0 for name in names} for split in splits}
    for sample in dataset.samples:
        for name in sample.labels:
            table[sample.split or "all"][name] += 1
    width = max(len(n) for n in names + ["label"])
    print(f"{dataset.root} ({dataset.layout}, {dataset.label_set.task})")
    print(f"{'label':{width}s} " + " ".join(f"{s:>7s}" for s in splits) + "   total   share")
    total = len(dataset.samples)
    for name in names:
        row = [table[s][name] for s in splits]
        print(f"{name:{width}s} " + " ".join(f"{v:7d}" for v in row) + f" {sum(row):7d} {sum(row) / total:7.1%}")
    print(f"{'total':{width}s} " + " ".join(f"{sum(table[s].values()):7d}" for s in splits) + f" {total:7d}")
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} file(s):")
        for item in dataset.skipped:
            print(f"  {item['path']}: {item['reason']}")
    if args.chart:
        plot_class_distribution(table, names, Path(args.chart))
        print(f"chart: {args.chart}")
    return 0


def register_train(subparsers) -> None:
    from training.config import add_train_arguments

    parser = subparsers.add_parser("train", help="two-stage fine-tuning on Ray Train")
    add_train_arguments(parser)
    parser.set_defaults(func=_train)


def _train(args) -> int:
    from training.config import config_from_args
    from training.pipeline import run_training

    run_training(config_from_args(args))
    return 0


def register_evaluate(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluation report for a checkpoint")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (required)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="split_manifest.json written by cxr train (this or --data-dir)")
    source.add_argument("--data-dir", help="a labelled folder in any supported layout (this or --manifest)")
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="the manifest's split to evaluate, with --manifest (default: %(default)s)",
    )
    parser.add_argument("--layout", default="auto", help=f"layout of --data-dir: {LAYOUT_NAMES} (default: %(default)s)")
    parser.add_argument("--out", required=True, help="folder for report.md and its plots (required)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per inference batch (default: %(default)s)")
    parser.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from cxr_model.checkpoint import read_card
    from training.evaluate import evaluate_checkpoint
    from training.layouts import scan_dataset
    from training.splits import load_manifest, split_entries

    card = read_card(args.checkpoint)
    if args.manifest:
        manifest = load_manifest(args.manifest)
        root, entries, split = Path(manifest["root"]), split_entries(manifest, args.split), args.split
    else:
        dataset = scan_dataset(args.data_dir, args.layout)
        unknown = set(dataset.label_set.names) - set(card.labels)
        if unknown:
            raise SystemExit(f"labels not known to the model: {sorted(unknown)} (model: {card.labels})")
        root, split = dataset.root, Path(args.data_dir).name
        entries = [{"path": s.path, "labels": list(s.labels)} for s in dataset.samples]
        for item in dataset.skipped:
            print(f"skipped {item['path']}: {item['reason']}")
    if not entries:
        raise SystemExit("no images to evaluate")
    report = evaluate_checkpoint(args.checkpoint, root, entries, args.out, args.batch_size, split)
    print(
        f"{report['n']} images: accuracy {report['accuracy']:.3f} "
        f"(95% CI {report['accuracy_ci95'][0]:.3f}-{report['accuracy_ci95'][1]:.3f}), "
        f"macro-F1 {report['macro_f1']:.3f} "
        f"(95% CI {report['macro_f1_ci95'][0]:.3f}-{report['macro_f1_ci95'][1]:.3f})"
    )
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def register_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="train the demo model: on generated pictures, or on your own data set with --data"
    )
    parser.add_argument(
        "--output-dir", default="runs/demo", help="where the generated data and the run go (default: %(default)s)"
    )
    parser.add_argument(
        "--data",
        help="a labelled data set (Kaggle, Roboflow, CSV or class folders) to train the demo model on instead of "
        "generated pictures; the model is then not labelled synthetic (default: none, generated pictures)",
    )
    parser.add_argument(
        "--max-per-label",
        type=int,
        default=300,
        help="with --data: at most this many images per label, so that the demo trains in minutes on a CPU; "
        "0 = all (default: %(default)s)",
    )
    parser.add_argument(
        "--per-class", type=int, default=60, help="generated images per class, without --data (default: %(default)s)"
    )
    parser.add_argument(
        "--config", default=str(DEMO_CONFIG), help="TrainConfig YAML for the demo run (default: %(default)s)"
    )
    parser.set_defaults(func=_demo)


def _demo(args) -> int:
    from training.config import load_config
    from training.pipeline import run_training

    out = Path(args.output_dir)
    config = load_config(args.config)
    if args.data:
        # Real data: the same recipe, but nothing about the model is synthetic any more.
        config.data_dir, config.synthetic_demo = str(Path(args.data).resolve()), False
        config.model_name = config.model_name.replace("-synthetic-demo", "-demo")
        config.max_per_label = args.max_per_label
    else:
        from training.synthetic import make_demo_dataset

        config.data_dir = str(out / "data")
        if not (out / "data").is_dir():
            counts = make_demo_dataset(out / "data", args.per_class, seed=0, duplicates=2)
            print(f"generated {sum(counts.values())} synthetic images in {out / 'data'}")
    config.output_dir = str(out / "run")
    final = run_training(config.validate())
    from cxr_model.onnx_runtime import export_onnx

    record = export_onnx(final)  # CPU serving runs the verified ONNX export
    print(f"ONNX export verified (max probability difference {record['max_abs_probability_diff']:.1e})")
    return 0


def register_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write model.onnx beside a checkpoint (verified against torch); --int8 adds model.int8.onnx"
    )
    parser.add_argument("checkpoint", help="checkpoint directory")
    parser.add_argument(
        "--int8", action="store_true", help="also the int8 export, kept only if it agrees with fp32 (default: off)"
    )
    parser.add_argument(
        "--manifest",
        default=None,
        help="the training run's split_manifest.json (default: the one beside the checkpoint directory)",
    )
    parser.add_argument("--calibration-images", type=int, default=200, help="val images to calibrate on (default: 200)")
    parser.add_argument("--held-out-images", type=int, default=400, help="test images to compare on (default: 400)")
    parser.add_argument("--ood-per-kind", type=int, default=20, help="out-of-scope pictures per kind (default: 20)")
    parser.add_argument(
        "--min-top1",
        type=float,
        default=0.99,
        help="least top-1 agreement on the held-out images fp32 does not flag low confidence (default: 0.99)",
    )
    parser.add_argument("--max-dp", type=float, default=0.03, help="largest |p_int8 - p_fp32| (default: 0.03)")
    parser.add_argument(
        "--min-gate-agreement",
        type=float,
        default=1.0,
        help="least share of the out-of-scope gate's decisions that must not change (default: 1.0, all)",
    )
    parser.set_defaults(func=_export)


def _export(args) -> int:
    from training.export import run_export

    return run_export(args)
