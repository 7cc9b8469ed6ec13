"""Load profile of a radiology department using CXR Serve through its JSON API.

    .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8000            # web UI on :8089
    .venv/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 2m

Each simulated user is a reading workstation: it uploads real-looking chest X-ray PNGs
(generated, 512 px, ~150 KB, like an exported radiograph) for patients with hospital-style MRNs,
and mixes predict / predict+save / patient search / study review. Per-endpoint latency is in
locust's report under the request names below. `CXR_LOAD_THINK_S` sets the pause between a
user's requests (default 1-3 s; `0` makes a closed loop for saturation tests, see bench/load.py).
"""

from __future__ import annotations

import io
import os
import random
import sys
import uuid
from pathlib import Path

import numpy as np
from locust import HttpUser, between, constant, task
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training.synthetic import render_chest  # noqa: E402

LABELS = ("COVID-19", "Lung Opacity", "Normal", "Viral Pneumonia")
PATIENTS = [f"MRN{n:08d}" for n in random.Random(7).sample(range(10_000_000, 99_999_999), 200)]


def _radiographs(count: int = 12, size: int = 512) -> list[bytes]:
    rng = np.random.default_rng(11)
    images = []
    for i in range(count):
        pixels = (render_chest(LABELS[i % len(LABELS)], rng, size=size) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


RADIOGRAPHS = _radiographs()


def _think_time():
    value = os.environ.get("CXR_LOAD_THINK_S")
    return constant(float(value)) if value is not None else between(1.0, 3.0)


class ReadingWorkstation(HttpUser):
    wait_time = _think_time()

    def on_start(self) -> None:
        self.saved: list[str] = []
        # CXR_API_KEY: a key from `cxr keys create` (give it a --rate-limit above the load you plan).
        if os.environ.get("CXR_API_KEY"):
            self.client.headers["Authorization"] = f"Bearer {os.environ['CXR_API_KEY']}"

    def _upload(self, name: str, save: bool) -> dict | None:
        patient = random.choice(PATIENTS)
        fields = {"patient_id": patient, "request_id": uuid.uuid4().hex}
        if save:
            fields["save"] = "1"
        files = {"image": (f"{patient}.png", random.choice(RADIOGRAPHS), "image/png")}
        with self.client.post(
            "/api/v1/predictions", data=fields, files=files, name=name, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return None
            body = response.json()
            if save and not body.get("saved"):
                response.failure(f"not saved: {body.get('save_error')}")
            return body

    @task(5)
    def predict(self) -> None:
        self._upload("predict", save=False)

    @task(3)
    def predict_and_save(self) -> None:
        body = self._upload("predict+save", save=True)
        if body and body.get("prediction_id"):
            self.saved = (self.saved + [body["prediction_id"]])[-20:]

    @task(2)
    def search_patient(self) -> None:
        self.client.get(
            f"/api/v1/patients/{random.choice(PATIENTS)}/predictions", params={"page_size": "10"}, name="search"
        )

    @task(2)
    def review_study(self) -> None:
        if not self.saved:
            return
        prediction_id = random.choice(self.saved)
        self.client.get(f"/api/v1/predictions/{prediction_id}", name="review")
        self.client.get(f"/api/v1/predictions/{prediction_id}/image", params={"kind": "annotated"}, name="review image")
