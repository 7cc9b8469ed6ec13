"""The two reference points the served figures are compared with, each in its own processes.

- ``model_ceiling``: the model alone on preprocessed tensors, all cores busy: what no server can beat.
- ``start_seed_style``: the naive script a team starts from: Starlette + uvicorn, ONNX Runtime, one
  image per call, PNG decode and resize per image, no batching.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CeilingRun:
    how: str
    rate: float  # img/s, all processes together
    cpu_per_image_s: float  # CPU seconds per image, all threads


def _ceiling_worker(checkpoint: str, runtime: str, threads: int, batch: int, seconds: float, queue) -> None:
    import torch

    from cxr_model.checkpoint import read_card
    from cxr_model.classifier import load_checkpoint
    from cxr_model.onnx_runtime import OnnxClassifier

    card = read_card(checkpoint)
    torch.set_num_threads(threads)
    engine = (
        OnnxClassifier(checkpoint, card, threads=threads, precision=runtime.split()[-1])
        if runtime.startswith("onnxruntime")
        else load_checkpoint(checkpoint, device="cpu", channels_last=True)
    )
    size = card.preprocess_spec.input_size
    x = torch.randn(batch, 3, size, size)
    engine.predict_batch(x)
    engine.predict_batch(x)
    started, cpu_started, images = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - started < seconds:
        engine.predict_batch(x)
        images += batch
    queue.put((images / (time.perf_counter() - started), (time.process_time() - cpu_started) / images))


def measure(checkpoint: Path, runtime: str, processes: int, threads: int, batch: int, seconds: float) -> CeilingRun:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(target=_ceiling_worker, args=(str(checkpoint), runtime, threads, batch, seconds, queue))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    rate = sum(r for r, _ in results)
    cpu = sum(c for _, c in results) / len(results)
    return CeilingRun(f"{runtime}, {processes} x {threads} thread(s), batch {batch}", rate, cpu)


def model_ceiling(checkpoint: Path, runtimes: list[str], seconds: float) -> CeilingRun:
    """Best rate over runtime x batch x (one process on all cores | one 1-thread process per core).

    Separate processes are like replicas: on a shared 2-core box, one single-threaded session per
    core beats one session whose 2-thread pool stalls whenever either thread is preempted.
    """
    cores = os.cpu_count() or 1
    best = None
    for runtime in runtimes:
        for processes, threads in ((1, cores), (cores, 1)):
            for batch in (1, 8):
                run = measure(checkpoint, runtime, processes, threads, batch, seconds)
                print(f"  {run.how:52s} {run.rate:6.2f} img/s  {run.cpu_per_image_s * 1000:6.1f} ms CPU/img")
                best = run if best is None or run.rate > best.rate else best
    return best


def run_seed_style_server(checkpoint: Path, port: int) -> None:
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


def start_seed_style(checkpoint: Path, port: int) -> multiprocessing.Process:
    """The seed-style server in its own process, like a real server (no GIL shared with the client)."""
    process = multiprocessing.get_context("spawn").Process(target=run_seed_style_server, args=(checkpoint, port))
    process.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.2)
    raise RuntimeError("the seed-style server did not start")
