"""Serving throughput, side by side in one run, on one checkpoint (DenseNet-161 at 224 by default).

    .venv/bin/python bench/serve_throughput.py [--seconds 15]

1. Model-only ceiling: the best of torch (channels_last) and ONNX Runtime, all
   CPU threads, batched, preprocessed tensors: what no server can beat.
2. Served: the real Serve app deployed from serve_config.yaml (loopback HTTP,
   multipart PNG uploads) at 1/8/32 concurrent clients, storage off, then
   storage on at the top concurrency.
3. Seed-style baseline: one image per request, decode per image, ONNX Runtime,
   no batching, in a plain Starlette/uvicorn server.

Prints img/s, p50/p99 latency and the ratios served/ceiling and served/baseline.
Every request goes to 127.0.0.1 only and every load phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="densenet161")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per load phase")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-batch-size", type=int, help="override serve_config.yaml's user_config")
    parser.add_argument("--batch-wait-timeout-s", type=float, help="override serve_config.yaml's user_config")
    parser.add_argument(
        "--replicas",
        type=int,
        default=os.cpu_count() or 1,
        help="BatchedClassifier replicas, sharing the cores equally (default: one per core)",
    )
    parser.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the Ray cluster, e.g. RAY_SERVE_ENABLE_DIRECT_INGRESS=1",
    )
    return parser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_checkpoint(backbone: str, size: int, directory: Path) -> Path:
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


def sample_pngs(count: int = 16) -> list[bytes]:
    from PIL import Image

    from training.synthetic import render_chest

    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        pixels = render_chest(["COVID-19", "Normal", "Lung Opacity", "Viral Pneumonia"][i % 4], rng) * 255
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def _ceiling_worker(checkpoint: str, runtime: str, threads: int, batch: int, seconds: float, queue) -> None:
    from cxr_model.checkpoint import read_card
    from cxr_model.classifier import load_checkpoint
    from cxr_model.onnx_runtime import OnnxClassifier

    card = read_card(checkpoint)
    torch.set_num_threads(threads)
    engine = (
        OnnxClassifier(checkpoint, card, threads=threads)
        if runtime == "onnxruntime"
        else load_checkpoint(checkpoint, device="cpu", channels_last=True)
    )
    size = card.preprocess_spec.input_size
    x = torch.randn(batch, 3, size, size)
    engine.predict_batch(x)
    engine.predict_batch(x)
    started, images = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        engine.predict_batch(x)
        images += batch
    queue.put(images / (time.perf_counter() - started))


def model_ceiling(checkpoint: Path, seconds: float) -> tuple[float, str]:
    """Best model-only rate over runtime x batch x (one process on all cores | one 1-thread process per core).

    Workers are separate processes, like replicas: on a shared 2-core box, one single-threaded
    session per core beats one session whose 2-thread pool stalls whenever either thread is preempted.
    """
    cores = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    best = (0.0, "")
    for runtime in ("torch channels_last", "onnxruntime"):
        for processes, threads in ((1, cores), (cores, 1)):
            for batch in (1, 8):
                queue = context.Queue()
                workers = [
                    context.Process(
                        target=_ceiling_worker, args=(str(checkpoint), runtime, threads, batch, seconds / 2, queue)
                    )
                    for _ in range(processes)
                ]
                for worker in workers:
                    worker.start()
                rate = sum(queue.get() for _ in workers)
                for worker in workers:
                    worker.join()
                how = f"{runtime}, {processes} x {threads} thread(s), batch {batch}"
                print(f"  {how:50s} {rate:6.2f} img/s")
                best = max(best, (rate, how))
    return best


def multipart_body(fields: dict, image: bytes) -> tuple[bytes, str]:
    boundary = "cxrbench7d1f0c"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="cxr.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class LeanClient:
    """One keep-alive HTTP/1.1 connection sending pre-built requests.

    The load generator shares the two cores with the server under test: httpx spent ~6 ms of CPU
    per upload, this spends well under 1 ms, so the measurement is of the server, not the client.
    """

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = parsed.hostname, parsed.port, parsed.path
        self.reader = self.writer = None

    def request(self, fields: dict, image: bytes) -> bytes:
        body, content_type = multipart_body(fields, image)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def send(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def _load(url: str, images: list[bytes], concurrency: int, seconds: float, fields: dict) -> dict:
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds

    async def client(worker: int):
        nonlocal errors
        http = LeanClient(url)
        requests = [http.request(fields, image) for image in images]
        i = worker
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = await asyncio.wait_for(http.send(requests[i % len(requests)]), timeout=120)
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
            i += concurrency
        await http.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return {
        "rate": len(latencies) / elapsed,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
        "errors": errors,
    }


def format_row(clients: int, r: dict) -> str:
    return (
        f"  {clients:3d} clients: {r['rate']:6.2f} img/s  p50 {r['p50']:7.0f} ms  p99 {r['p99']:7.0f} ms  "
        f"errors {r['errors']}"
    )


def load(url, images, concurrency, seconds, fields=None) -> dict:
    asyncio.run(_load(url, images, concurrency, min(3.0, seconds / 3), fields or {}))  # warm-up
    return asyncio.run(_load(url, images, concurrency, seconds, fields or {}))


def run_baseline_server(checkpoint: Path, port: int) -> None:
    """The seed-style server: decode per request with numpy, ONNX Runtime one image at a time.

    Runs in its own process, like a real server, so it never shares a GIL with the load client.
    """
    import onnxruntime as ort
    import uvicorn
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from cxr_model.checkpoint import read_card

    card = read_card(checkpoint)
    size = card.preprocess_spec.input_size
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(checkpoint / "model.onnx"), options, providers=["CPUExecutionProvider"])
    mean = np.array(card.preprocessing["mean"], np.float32)[:, None, None]
    std = np.array(card.preprocessing["std"], np.float32)[:, None, None]

    async def predict(request):
        form = await request.form()
        data = await form["image"].read()
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
        x = ((np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0 - mean) / std)[None]
        logits = session.run(None, {"input": x.astype(np.float32)})[0][0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        return JSONResponse({"probabilities": dict(zip(card.labels, probs.tolist()))})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_baseline(checkpoint: Path, port: int) -> multiprocessing.Process:
    process = multiprocessing.get_context("spawn").Process(target=run_baseline_server, args=(checkpoint, port))
    process.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.2)
    raise RuntimeError("baseline server did not start")


def deploy_served(checkpoint: Path, port: int, args, mongodb_uri: str | None) -> None:
    import yaml
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["checkpoint"] = str(checkpoint)
    env = {"CXR_MONGODB_URI": mongodb_uri} if mongodb_uri else {}
    # A loopback-only benchmark of the serving path: the app's own authentication is off, as in the demo.
    app["runtime_env"] = {"env_vars": {"CXR_MONGODB_DATABASE": "bench", "CXR_AUTH": "off", "CXR_DEMO": "true", **env}}
    for deployment in app["deployments"]:
        if deployment["name"] == "BatchedClassifier":
            # Fixed replica count for a steady measurement (autoscaling would add them mid-phase).
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = args.replicas
            deployment["ray_actor_options"]["num_cpus"] = (os.cpu_count() or 1) / args.replicas
            if args.max_batch_size:
                deployment["user_config"]["max_batch_size"] = args.max_batch_size
            if args.batch_wait_timeout_s is not None:
                deployment["user_config"]["batch_wait_timeout_s"] = args.batch_wait_timeout_s
    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=True)


def main(args) -> None:
    import ray
    from ray import serve

    from tests.serve.conftest import MongoServer

    levels = [int(c) for c in args.concurrency.split(",")]
    images = sample_pngs()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_checkpoint(args.backbone, args.image_size, Path(tmp) / "ckpt")
        print(f"{args.backbone} at {args.image_size}px, {os.cpu_count()} CPUs, torch {torch.__version__}")
        print("\n[1] model-only ceiling")
        ceiling, how = model_ceiling(checkpoint, args.seconds)
        print(f"  ceiling: {ceiling:.2f} img/s ({how})")

        print("\n[2] seed-style baseline (decode per request, ONNX Runtime, no batching)")
        baseline_port = free_port()
        server = start_baseline(checkpoint, baseline_port)
        baseline = {c: load(f"http://127.0.0.1:{baseline_port}/predict", images, c, args.seconds) for c in levels}
        server.terminate()
        server.join()
        for c, r in baseline.items():
            print(format_row(c, r))

        print("\n[3] served (Ray Serve app from serve_config.yaml)")
        mongo = MongoServer(Path(tmp) / "db")
        mongo.start()
        for item in args.serve_env:
            key, _, value = item.partition("=")
            os.environ[key] = value
            print(f"  with {key}={value}")
        ray.init(
            address="local",
            num_cpus=(os.cpu_count() or 1) + 1,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
        )
        port = free_port()
        deploy_served(checkpoint, port, args, mongo.uri)
        url = f"http://127.0.0.1:{port}/api/v1/predictions"
        fields = {"patient_id": "BENCH-0001"}
        served = {c: load(url, images, c, args.seconds, fields) for c in levels}
        top = max(levels)
        stored = load(url, images, top, args.seconds, {**fields, "save": "1"})
        for c, r in served.items():
            print(format_row(c, r))
        print(
            f"  {top:3d} clients, storage on: {stored['rate']:6.2f} img/s  p50 {stored['p50']:7.0f} ms  "
            f"p99 {stored['p99']:7.0f} ms  errors {stored['errors']}"
        )
        serve.shutdown()
        ray.shutdown()
        mongo.stop()

    best_served = max(r["rate"] for r in served.values())
    best_baseline = max(r["rate"] for r in baseline.values())
    print("\nsummary (saturation = best over client counts)")
    print(f"  ceiling                 {ceiling:6.2f} img/s")
    print(f"  served, storage off     {best_served:6.2f} img/s   served/ceiling  {best_served / ceiling:5.2f}")
    print(f"  served, storage on      {stored['rate']:6.2f} img/s   (at {top} clients)")
    print(f"  seed-style baseline     {best_baseline:6.2f} img/s   served/baseline {best_served / best_baseline:5.2f}")


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main(get_args_parser().parse_args())
