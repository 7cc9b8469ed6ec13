"""Serving throughput of what ships, side by side in one run, on one checkpoint and one image set.

    .venv/bin/python bench/serve_throughput.py [--seconds 15] [--checkpoint DIR]

1. Model-only ceiling: the model alone, every runtime and thread layout, preprocessed tensors.
2. Seed-style script: Starlette + ONNX Runtime, one image per call, decode + resize per image.
3. Served: serve_config.yaml deployed unchanged (`serve deploy`) on the local cluster that
   scripts/run.sh starts (scripts/local_cluster.sh: same code path), embedded database and all.
   The bench fails loudly unless every deployment is HEALTHY and the classifier reaches the
   replica count its autoscaling_config allows. Save off and save on, single-image and batch
   requests, with the CPU each image costs per process group (from /proc).

Images: real radiographs from ../shared/data/cxr-real-sample when present (generated otherwise,
said in the output). Every request goes to 127.0.0.1; every load phase is bounded in time.
Prints img/s, p50/p99 and the ratios served / seed-style and served / ceiling.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cpu_accounting import per_group, snapshot  # noqa: E402
from http_load import Request, closed_loop, multipart_body, raw_request, single_image_requests  # noqa: E402
from model_only import measure, model_ceiling, start_seed_style  # noqa: E402

REAL_SAMPLE = ROOT.parent / "shared" / "data" / "cxr-real-sample"
CLASSIFIER = "BatchedClassifier"
DASHBOARD = "http://127.0.0.1:8265"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="", help="a checkpoint with its ONNX export (default: a new one)")
    parser.add_argument("--backbone", default="densenet161", help="backbone of the new checkpoint")
    parser.add_argument("--image-size", type=int, default=224, help="input size of the new checkpoint")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per load phase")
    parser.add_argument("--concurrency", default="1,16,32", help="client counts, one phase each")
    parser.add_argument("--images", type=int, default=64, help="distinct images sent, round robin")
    parser.add_argument("--batch-items", type=int, default=8, help="images per POST /api/v1/predictions:batch")
    parser.add_argument(
        "--variant",
        choices=("shipped", "gpu"),
        default="shipped",
        help="shipped: serve_config.yaml; gpu: the GPU overlay's config (scripts/kube_serve_config.py) on this "
        "machine's GPU, without the CPU reference points (bench/gpu_check.sh)",
    )
    parser.add_argument(
        "--cluster-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the cluster (printed as an override of what ships)",
    )
    return parser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_checkpoint(backbone: str, size: int, directory: Path) -> Path:
    import torch

    from cxr_model.checkpoint import ModelCard, save_checkpoint
    from cxr_model.labels import COVID4
    from cxr_model.network import build_model
    from cxr_model.onnx_runtime import export_onnx
    from cxr_model.preprocessing import PreprocessSpec

    torch.manual_seed(0)
    card = ModelCard(
        name=f"bench-{backbone}",
        version="bench",
        backbone=backbone,
        task="multiclass",
        labels=list(COVID4),
        preprocessing=PreprocessSpec(input_size=size).to_dict(),
    )
    save_checkpoint(build_model(backbone, 4, "none"), card, directory)
    export_onnx(directory)
    return directory


def bench_images(count: int) -> tuple[list[bytes], str]:
    """Real radiographs (classes interleaved) when the shared sample is here, else generated ones."""
    if REAL_SAMPLE.is_dir():
        per_class = [sorted((d / "images").glob("*.png")) for d in sorted(REAL_SAMPLE.iterdir()) if d.is_dir()]
        chosen = [paths[i] for i in range(count) for paths in per_class if i < len(paths)][:count]
        return [p.read_bytes() for p in chosen], f"{len(chosen)} real radiographs from {REAL_SAMPLE}"
    from PIL import Image

    from training.synthetic import render_chest

    rng, images = np.random.default_rng(0), []
    for i in range(count):
        pixels = render_chest(["COVID-19", "Normal", "Lung Opacity", "Viral Pneumonia"][i % 4], rng) * 255
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images, f"{count} GENERATED pictures (no ../shared/data/cxr-real-sample here): not real radiographs"


def serve_cli(*args: str) -> str:
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "serve"), *args, "--address", DASHBOARD],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise RuntimeError(f"serve {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def deployment_states() -> tuple[str, dict[str, tuple[str, int]]]:
    """`serve status`: the app's status and, per deployment, (status, running replicas)."""
    app = yaml.safe_load(serve_cli("status"))["applications"]["cxr"]
    deployments = {
        name: (d["status"], d.get("replica_states", {}).get("RUNNING", 0)) for name, d in app["deployments"].items()
    }
    return app["status"], deployments


def intended_replicas(config: dict, node: dict[str, float]) -> dict[str, tuple[int, int]]:
    """Per deployment, the replica counts it may legitimately run on this one node: a fixed count, or
    autoscaling's min up to as many of its max as fit beside the others."""
    from serve.placement import Node, most_replicas, unplaceable

    left = unplaceable(config, [Node("local", dict(node))])
    want = {}
    for d in config["applications"][0]["deployments"]:
        most = most_replicas(d) - left.count(d["name"])
        least = d["autoscaling_config"].get("min_replicas", 1) if d.get("autoscaling_config") else most
        want[d["name"]] = (least, most)
    return want


def check_healthy(where: str, want: dict[str, tuple[int, int]], scaled_up: bool = True) -> None:
    """Loud failure unless the app is RUNNING, every deployment HEALTHY and at an intended count (the
    classifier at its most once the load has scaled it up)."""
    status, deployments = deployment_states()
    healthy = status == "RUNNING" and all(s == "HEALTHY" for s, _ in deployments.values())
    counted = all(want[name][0] <= running <= want[name][1] for name, (_, running) in deployments.items())
    if scaled_up:
        counted = counted and deployments[CLASSIFIER][1] == want[CLASSIFIER][1]
    if not healthy or not counted:
        raise SystemExit(f"FAIL ({where}): app {status}, deployments {deployments}, intended replicas {want}")


class LocalCluster:
    """scripts/local_cluster.sh, as scripts/run.sh starts it, with the bench's checkpoint and database dir."""

    def __init__(self, checkpoint: Path, tmp: Path, overrides: dict[str, str], start_args: list[str]):
        self.start_args = start_args
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            # What scripts/run.sh sets: the loopback demo, authentication off.
            "CXR_DEMO": "true",
            "CXR_AUTH": "off",
            "CXR_CHECKPOINT": str(checkpoint),
            "CXR_EMBEDDED_DB_DIR": str(tmp / "db"),
            "CXR_EMBEDDED_DB_PORT": str(free_port()),
            "CXR_METRICS_PORT": str(free_port()),
            **overrides,
        }

    def __enter__(self):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", 8000)) == 0:
                raise SystemExit("port 8000 is taken (a running scripts/run.sh?): stop it first")
        subprocess.run(
            ["bash", "scripts/local_cluster.sh", "start", *self.start_args], cwd=ROOT, env=self.env, check=True
        )
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["bash", "scripts/local_cluster.sh", "stop"], cwd=ROOT, env=self.env, check=False)


def deploy(config_path: Path, want: dict[str, tuple[int, int]], url: str, warm: list[Request], clients: int) -> None:
    serve_cli("deploy", str(config_path))
    deadline = time.monotonic() + 300
    while deployment_states()[0] != "RUNNING":
        if time.monotonic() > deadline:
            raise SystemExit(f"FAIL: the app is not RUNNING after 300 s: {deployment_states()}")
        time.sleep(2)
    # Saturating load until the autoscaler has started every replica it may (bounded).
    deadline = time.monotonic() + 150
    while deployment_states()[1][CLASSIFIER][1] < want[CLASSIFIER][1] and time.monotonic() < deadline:
        closed_loop(url, warm, clients, 10, warmup=0)
    check_healthy("after scale-up", want)


def measured(url: str, requests: list[Request], clients: int, seconds: float, label: str):
    closed_loop(url, requests, clients, 3.0, warmup=0)  # warm-up, outside the CPU accounting
    before = snapshot()
    result = closed_loop(url, requests, clients, seconds, warmup=0)
    cpu = per_group(before, snapshot())
    print(result.row(label))
    return result, cpu


def print_cpu(cpu: dict[str, float], images: int, model_cpu_s: float) -> float:
    """Per-group CPU ms per image, and the part outside the model (all of it minus the model's own)."""
    total = sum(cpu.values())
    for group, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"    {group:24s} {seconds / images * 1000:7.1f} ms CPU/img")
    outside = total / images - model_cpu_s
    print(f"    {'all':24s} {total / images * 1000:7.1f} ms; the model alone {model_cpu_s * 1000:.1f} ms")
    print(f"    outside the model: {outside * 1000:.1f} ms CPU/img (goal <= 10)")
    return outside


def batch_requests(url: str, images: list[bytes], items: int) -> list[Request]:
    requests = []
    for start in range(0, len(images) - items + 1, items):
        fields = {"items": json.dumps([{"patient_id": f"BENCH-{start + i:04d}"} for i in range(items)])}
        requests.append(Request(raw_request(url, *multipart_body(fields, images[start : start + items])), items))
    return requests


def served_phases(args, config_path: Path, node: dict, levels: list[int], images: list[bytes], model_cpu_s: float):
    base = "http://127.0.0.1:8000/api/v1"
    single, save = [{"patient_id": "BENCH-0001"}, {"patient_id": "BENCH-0001", "save": "1"}]
    off = single_image_requests(f"{base}/predictions", images, single)
    on = single_image_requests(f"{base}/predictions", images, save)
    want = intended_replicas(yaml.safe_load(config_path.read_text()), node)
    print(f"  intended replicas on this node (least, most): {want}")
    deploy(config_path, want, f"{base}/predictions", off, max(levels))
    out = {"off": {}}
    for clients in levels:
        result, cpu = measured(f"{base}/predictions", off, clients, args.seconds, f"{clients:3d} clients, save off")
        out["off"][clients] = result
        if clients == max(levels):
            out["outside_model_s"] = print_cpu(cpu, result.images, model_cpu_s)
    top = max(levels)
    out["on"], cpu = measured(f"{base}/predictions", on, top, args.seconds, f"{top:3d} clients, save on")
    print_cpu(cpu, out["on"].images, model_cpu_s)
    batch = batch_requests(f"{base}/predictions:batch", images, args.batch_items)
    clients = max(1, top // args.batch_items)
    out["batch"], _ = measured(
        f"{base}/predictions:batch", batch, clients, args.seconds, f"{clients:3d} clients x {args.batch_items} images"
    )
    check_healthy("after the last phase", want)
    return out


def int8_export(checkpoint: Path, images: list[bytes]) -> bool:
    """The bench checkpoint's int8 export, calibrated and compared on the bench's own images.

    The bench model is untrained, so its agreement figures say nothing about accuracy (printed, not
    enforced); `cxr export --int8` on a trained checkpoint is what enforces them."""
    from cxr_model.checkpoint import read_card
    from cxr_model.preprocessing import open_image
    from cxr_model.quantize import AgreementFloors, cpu_int8_support, export_int8
    from training.export import model_inputs

    spec = read_card(checkpoint).preprocess_spec
    inputs = model_inputs([open_image(data, spec.max_pixels) for data in images], spec)
    half = len(inputs) // 2
    record = export_int8(checkpoint, inputs[:half], inputs[half:], inputs[:0], AgreementFloors(0.0, 1.0, 0.0))
    a = record["agreement"]
    print(f"  int8 export (untrained model: top-1 {a['top1']:.3f}, max |dp| {a['max_abs_dp']:.4f}, not enforced)")
    print("  CPU: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu_int8_support().items()))
    return True


def int8_phase(args, tmp: Path, levels: list[int], images: list[bytes]) -> tuple:
    """Redeploy with the opt-in precision: int8, and measure the top client count."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["precision"] = "int8"
    path = tmp / "serve_config.int8.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    print("  OVERRIDE (the opt-in): args.precision int8")
    url = "http://127.0.0.1:8000/api/v1/predictions"
    requests = single_image_requests(url, images, {"patient_id": "BENCH-0001"})
    want = intended_replicas(config, {"CPU": float(os.environ.get("CXR_RAY_CPUS") or os.cpu_count() or 1)})
    deploy(path, want, url, requests, max(levels))
    result, _ = measured(url, requests, max(levels), args.seconds, f"{max(levels):3d} clients, int8, save off")
    return result


def references(args, checkpoint: Path, images: list[bytes], levels: list[int]):
    """[1] the model-only ceiling and the model's own CPU per image; [2] the seed-style script."""
    print("\n[1] model-only ceiling")
    ceiling = model_ceiling(checkpoint, ["torch channels_last", "onnxruntime fp32"], args.seconds / 2)
    # The model's own CPU per image as the replicas run it: one thread, batch 1.
    model_cpu_s = measure(checkpoint, "onnxruntime fp32", 1, 1, 1, args.seconds / 3).cpu_per_image_s
    print(f"  ceiling: {ceiling.rate:.2f} img/s ({ceiling.how})")

    print("\n[2] seed-style script (Starlette, ONNX Runtime, one image per call, decode per image)")
    port = free_port()
    server = start_seed_style(checkpoint, port)
    requests = single_image_requests(f"http://127.0.0.1:{port}/predict", images, {})
    seed = {c: closed_loop(f"http://127.0.0.1:{port}/predict", requests, c, args.seconds) for c in levels}
    server.terminate()
    server.join()
    for c, r in seed.items():
        print(r.row(f"{c:3d} clients"))
    return ceiling, model_cpu_s, seed


def variant_config(args, tmp: Path) -> tuple[Path, dict, list[str]]:
    """The config file to deploy, this node's resources, and extra `ray start` arguments."""
    cpus = float(os.environ.get("CXR_RAY_CPUS") or os.cpu_count() or 1)
    if args.variant == "shipped":
        return ROOT / "serve_config.yaml", {"CPU": cpus}, []
    sys.path.insert(0, str(ROOT / "scripts"))
    from kube_serve_config import gpu

    config = gpu(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    config["http_options"]["host"] = "127.0.0.1"  # the overlay listens on the pod IP; here loopback only
    path = tmp / "serve_config.gpu.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    print("  the GPU overlay's config, with http_options.host 127.0.0.1 and the bench's checkpoint")
    # One node plays both worker groups: the GPU one and the CPU one (its cxr_cpu_node resource).
    return (
        path,
        {"CPU": cpus, "GPU": 1, "cxr_cpu_node": cpus},
        ["--num-gpus", "1", "--resources", f'{{"cxr_cpu_node": {cpus:g}}}'],
    )


def summary(levels, ceiling, seed, served) -> None:
    top = max(levels)
    best_served = max(r.rate for r in served["off"].values())
    print("\nsummary (saturation = best over client counts)")
    print(f"  served, save off         {best_served:6.2f} img/s")
    print(
        f"  served, save on          {served['on'].rate:6.2f} img/s  (p50 {served['on'].percentile_ms(0.5):.0f} ms, "
        f"p99 {served['on'].percentile_ms(0.99):.0f} ms; save off p50 {served['off'][top].percentile_ms(0.5):.0f} ms, "
        f"p99 {served['off'][top].percentile_ms(0.99):.0f} ms at {top} clients)"
    )
    print(f"  served, batch requests   {served['batch'].rate:6.2f} img/s")
    print(f"  save on / save off       {served['on'].rate / served['off'][top].rate:5.2f}   (goal >= 0.8)")
    print(f"  batch / single requests  {served['batch'].rate / served['off'][top].rate:5.2f}")
    print(f"  CPU outside the model    {served['outside_model_s'] * 1000:5.1f} ms/img (goal <= 10)")
    if ceiling is None:
        return
    best_seed = max(r.rate for r in seed.values())
    print(f"  model-only ceiling       {ceiling.rate:6.2f} img/s")
    print(f"  seed-style script        {best_seed:6.2f} img/s")
    print(f"  served / seed-style      {best_served / best_seed:5.2f}   (goal >= 1.0)")
    print(f"  served / ceiling         {best_served / ceiling.rate:5.2f}   (goal >= 0.85)")


def main(args) -> None:
    levels = [int(c) for c in args.concurrency.split(",")]
    images, source = bench_images(args.images)
    overrides = dict(item.partition("=")[::2] for item in args.cluster_env)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = (
            Path(args.checkpoint)
            if args.checkpoint
            else make_checkpoint(args.backbone, args.image_size, Path(tmp) / "ckpt")
        )
        print(f"{checkpoint} on {os.cpu_count()} CPUs; images: {source}")
        ceiling, model_cpu_s, seed = None, 0.0, None
        if args.variant == "shipped":
            ceiling, model_cpu_s, seed = references(args, checkpoint, images, levels)
        print(f"\n[3] served: {args.variant} config, on scripts/local_cluster.sh's cluster")
        config_path, node, start_args = variant_config(args, Path(tmp))
        for key, value in overrides.items():
            print(f"  OVERRIDE (not what ships): {key}={value}")
        int8 = args.variant == "shipped" and int8_export(checkpoint, images)
        int8_ceiling = (
            measure(checkpoint, "onnxruntime int8", os.cpu_count() or 1, 1, 1, args.seconds / 2) if int8 else None
        )
        with LocalCluster(checkpoint, Path(tmp), overrides, start_args):
            served = served_phases(args, config_path, node, levels, images, model_cpu_s)
            if int8:
                served["int8"] = int8_phase(args, Path(tmp), levels, images)
    summary(levels, ceiling, seed, served)
    if int8:
        best_seed = max(r.rate for r in seed.values())
        print(f"  int8 ceiling             {int8_ceiling.rate:6.2f} img/s ({int8_ceiling.how})")
        print(f"  served int8              {served['int8'].rate:6.2f} img/s")
        print(f"  served int8 / seed-style {served['int8'].rate / best_seed:5.2f}   (goal >= 1.3)")
        print(f"  served int8 / int8 ceiling {served['int8'].rate / int8_ceiling.rate:5.2f} (goal >= 0.85)")


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main(get_args_parser().parse_args())
