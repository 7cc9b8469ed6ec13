"""The out-of-scope gate in the running service: API, pages and metrics. Real Ray, DB and HTTP."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from cxr_model.checkpoint import read_card, write_card
from cxr_model.scope import REASONS
from tests.serve.helpers import chest_png, post_prediction, stored_counts
from training.synthetic import render_out_of_scope

CASES = [
    ("colour_photo", "colour_image"),
    ("blank", "blank_image"),
    ("noise", "noise_image"),
    ("limb_radiograph", "unlike_chest_radiographs"),
    ("skull_radiograph", "unlike_chest_radiographs"),
    ("greyscale_photo", "unlike_chest_radiographs"),
]


def picture(kind: str, seed: int = 0, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    render_out_of_scope(kind, np.random.default_rng(seed)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("kind, reason", CASES, ids=[c[0] for c in CASES])
def test_out_of_scope_pictures_get_a_reason_and_no_label(service, db, kind, reason):
    before = stored_counts(db)
    response = service.predict(picture(kind, seed=1), patient_id="P-SCOPE-1", save="1")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "out_of_scope" and error["reason"] == reason and error["field"] == "image"
    assert error["message"] == REASONS[reason]
    assert not {"probabilities", "top_label", "confidence"} & set(response.json())
    if reason == "unlike_chest_radiographs":  # passed the image checks; refused by a fitted gate
        measures, scope = error["measures"], read_card(service.checkpoint).scope
        assert any(measures[f"{gate}_distance"] > measures[f"{gate}_threshold"] for gate in ("feature", "layout"))
        assert measures["feature_threshold"] == scope["feature_gate"]["threshold"]
        assert measures["layout_threshold"] == scope["layout_gate"]["threshold"]
    assert stored_counts(db) == before


def test_chest_radiographs_still_get_labels_and_the_model_names_its_gate(service):
    for seed in (900, 901, 902):
        response = service.predict(chest_png(seed), patient_id="P-SCOPE-2")
        assert response.status_code == 200, response.text
        gates = response.json()["model"]["scope_gate"]
        assert gates["feature_gate"] is True and gates["layout_gate"] is True


def test_jpeg_photo_is_judged_by_content_not_format(service):
    response = service.predict(
        picture("colour_photo", seed=2, fmt="JPEG"), filename="chest.png", patient_id="P-SCOPE-3"
    )
    assert response.status_code == 422 and response.json()["error"]["reason"] == "colour_image"


@pytest.mark.parametrize("htmx", [False, True])
def test_pages_show_the_reason_beside_the_image_field_and_no_result(service, db, htmx):
    before = stored_counts(db)
    response = post_prediction(service, picture("limb_radiograph", seed=3), htmx=htmx, save="1")
    assert response.status_code == 422
    assert "does not look like the frontal chest radiographs" in response.text
    assert "<meter" not in response.text and "COVID-19" not in response.text
    assert stored_counts(db) == before


def test_out_of_scope_refusals_are_counted_by_reason(service, ray_metrics_url):
    def count(reason: str) -> float:
        text = httpx.get(ray_metrics_url, timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ray_cxr_out_of_scope_total{") and f'reason="{reason}"' in line
        )

    # Ray exports application metrics every 2 s here: let earlier tests' refusals land first.
    before, settle = count("noise_image"), time.monotonic() + 60
    while time.monotonic() < settle:
        time.sleep(5)
        now = count("noise_image")
        if now == before:
            break
        before = now
    assert service.predict(picture("noise", seed=5)).status_code == 422
    deadline = time.monotonic() + 30
    while count("noise_image") < before + 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert count("noise_image") == before + 1


def test_a_refusal_by_the_feature_gate_is_not_logged_as_a_failure(service):
    """Serve logs every exception a replica raises as an ERROR; the gate's refusal is an answer."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    assert service.predict(picture("limb_radiograph", seed=11)).status_code == 422
    time.sleep(2)  # let the replica's log file catch up
    classifier_logs = "".join(p.read_text(errors="replace") for p in logs.rglob("replica_cxr_BatchedClassifier_*"))
    assert "OutOfScope" not in classifier_logs and "InputSizeMismatch" not in classifier_logs


def test_a_synthetic_demo_model_says_why_it_refuses_a_real_radiograph(service, db, real_sample, tmp_path):
    """The demo model's gates know only generated pictures: its refusal must blame the model, not the image."""
    demo = tmp_path / "demo"
    shutil.copytree(service.checkpoint, demo)
    card = read_card(demo)
    card.synthetic_demo, card.version = True, "0.0.1-demo"
    write_card(card, demo)
    real = next((real_sample / "Normal" / "images").glob("*.png")).read_bytes()
    before = stored_counts(db)
    service.redeploy({"checkpoint": str(demo), "batch_wait_timeout_s": 0.2})
    try:
        deadline = time.monotonic() + 60
        while service.http.get("/api/v1/model").json()["version"] != "0.0.1-demo" and time.monotonic() < deadline:
            time.sleep(0.5)
        response = service.predict(real, patient_id="P-DEMO-1", save="1")
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "out_of_scope" and error["reason"] == "unlike_synthetic_demo_images"
        for words in ("trained only on generated pictures", "CXR_CHECKPOINT", "CXR_DEMO_DATA"):
            assert words in error["message"]
        page = post_prediction(service, real, htmx=False, save="1")
        assert page.status_code == 422 and "trained only on generated pictures" in page.text
        assert "CXR_CHECKPOINT" in page.text and "<meter" not in page.text
    finally:
        service.redeploy({"checkpoint": str(service.checkpoint), "batch_wait_timeout_s": 0.2})
    assert stored_counts(db) == before
