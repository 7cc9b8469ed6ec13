"""A real browser (Debian's chromium via playwright) against the running Serve app and embedded DB.

Screenshots of every step go to test-artifacts/screenshots/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from tests.serve.browser import Session, expect
from tests.serve.helpers import chest_png

LABELS = ("COVID-19", "Lung Opacity", "Normal", "Viral Pneumonia")


def png_file(seed: int, name: str = "chest.png") -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": chest_png(seed)}


def search_and_open(s: Session, patient: str, live: bool) -> None:
    s.page.get_by_role("link", name="Patient search").click()
    s.page.fill("#search-patient", patient)
    if not live:
        s.page.get_by_role("button", name="Search").click()
    row = s.page.locator("#patient-results tbody tr")
    row.first.wait_for()
    assert row.count() == 1 and s.image_loaded("#patient-results img.thumb")
    assert f"patient_id={patient}" in s.page.url  # the search is bookmarkable
    s.shot("search")
    s.page.locator("#patient-results").get_by_role("link", name=re.compile("Review")).click()
    s.page.wait_for_url(re.compile(r"/predictions/[0-9a-f]+$"))
    assert patient in s.page.locator("h1").inner_text()
    assert s.image_loaded("img[alt^='Annotated radiograph']")
    s.shot("prediction")
    s.page.get_by_role("link", name=f"All predictions for patient {patient}").click()
    s.page.locator("#patient-results tbody tr").first.wait_for()


def test_clinician_flow_with_htmx(browser, service, db):
    patient = f"P-E2E-{uuid.uuid4().hex[:8]}"
    s = Session(browser, service.base_url, "htmx", api_key=service.api_key)
    try:
        s.page.goto("/")
        assert s.page.locator("#safety-notice").inner_text() == "Decision support only - not for diagnostic use"
        s.page.get_by_label("Patient ID").fill(patient)
        s.page.get_by_label("Chest X-ray image").set_input_files(png_file(50))
        s.page.get_by_label("Grad-CAM overlay").check()
        s.shot("form")
        s.page.get_by_role("button", name="Predict").click()
        s.page.locator("#result article.result").wait_for()
        assert s.page.url.rstrip("/") == service.base_url  # swapped in place, no navigation
        assert s.page.locator(".top-label").inner_text() in LABELS
        assert s.page.locator("#result meter").count() == 4
        assert s.image_loaded("#result .view-annotated-image img")
        s.shot("result")
        s.page.locator(".view-switch label[for=view-gradcam]").click()
        assert s.page.locator(".view-gradcam-image").is_visible()
        assert not s.page.locator(".view-annotated-image").is_visible()
        s.shot("gradcam")
        s.page.get_by_role("button", name="Save to record").click()
        s.page.get_by_text("Saved to the record").wait_for()
        s.shot("saved")
        assert db["predictions"].count_documents({"patient_id": patient}) == 1
        search_and_open(s, patient, live=True)
        assert s.fits_width()
        assert s.errors == []
    finally:
        s.close()


def test_the_same_flow_without_javascript(browser, service, db):
    patient = f"P-NOJS-{uuid.uuid4().hex[:8]}"
    s = Session(browser, service.base_url, "nojs", javascript=False, api_key=service.api_key)
    try:
        s.page.goto("/")
        s.page.get_by_label("Patient ID").fill(patient)
        s.page.get_by_label("Chest X-ray image").set_input_files(png_file(51))
        s.page.get_by_role("button", name="Predict").click()
        s.page.locator("#result article.result").wait_for()
        assert s.page.url.endswith("/predictions")  # a plain form post answered with a whole page
        assert s.image_loaded("#result .view-annotated-image img")
        s.shot("result")
        s.page.get_by_role("button", name="Save to record").click()
        s.page.wait_for_url(re.compile(r"/predictions/[0-9a-f]+$"))
        s.shot("saved-prediction")
        assert db["predictions"].count_documents({"patient_id": patient}) == 1
        search_and_open(s, patient, live=False)
        assert s.errors == []  # console errors and CSP refusals fail this flow as they fail the JS one
    finally:
        s.close()


def test_errors_show_next_to_their_field_and_the_chosen_file_survives(browser, service, db):
    s = Session(
        browser, service.base_url, "errors", viewport=(800, 1100), api_key=service.api_key
    )  # a tablet held upright
    try:
        s.page.goto("/")
        s.page.get_by_label("Patient ID").fill("P-ERR-1")
        s.page.get_by_label("Chest X-ray image").set_input_files(
            {"name": "notes.png", "mimeType": "image/png", "buffer": b"these are my notes, not an X-ray"}
        )
        s.page.get_by_role("button", name="Predict").click()
        image_error = s.page.locator(".field:has(#image) .field-error")
        image_error.filter(has_text="not a PNG, JPEG or DICOM image").wait_for()
        expect(s.page.locator("#image")).to_have_attribute("aria-invalid", "true")
        assert s.page.locator("#patient_id-error").inner_text() == ""
        s.shot("not-an-image")
        # Now a real image but no patient ID: the message moves, the file stays chosen.
        s.page.get_by_label("Chest X-ray image").set_input_files(png_file(52))
        s.page.get_by_label("Patient ID").fill("")
        s.page.get_by_role("button", name="Predict").click()
        s.page.locator("#patient_id-error").filter(has_text="Enter the patient ID").wait_for()
        assert image_error.inner_text() == ""
        expect(s.page.locator("#image")).not_to_have_attribute("aria-invalid", "true")
        assert s.page.eval_on_selector("#image", "input => input.files.length") == 1
        s.shot("missing-patient")
        s.page.get_by_label("Patient ID").fill("P-ERR-1")
        s.page.get_by_role("button", name="Predict").click()
        s.page.locator("#result article.result").wait_for()
        assert s.page.locator("#patient_id-error").inner_text() == ""
        assert s.fits_width()
        assert db["predictions"].count_documents({"patient_id": "P-ERR-1"}) == 0
        # 4xx responses logged by the browser are expected here; script errors are not.
        assert not [e for e in s.errors if not e.startswith(("Failed to load resource", "Response Status Error Code"))]
    finally:
        s.close()


def _rolled(service, checkpoint: Path, version: str) -> None:
    service.redeploy({"checkpoint": str(checkpoint), "batch_wait_timeout_s": 0.2})
    deadline = time.monotonic() + 60
    while service.http.get("/api/v1/model").json()["version"] != version and time.monotonic() < deadline:
        time.sleep(0.5)


def _png(image) -> dict:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"name": "radiograph.png", "mimeType": "image/png", "buffer": buffer.getvalue()}


def _upload(s: Session, patient: str, picture: dict, gradcam: bool = True) -> None:
    s.page.goto("/")
    s.page.get_by_label("Patient ID").fill(patient)
    s.page.get_by_label("Chest X-ray image").set_input_files(picture)
    if gradcam:
        s.page.get_by_label("Grad-CAM overlay").check()
    s.page.get_by_role("button", name="Predict").click()


def test_real_radiographs_through_the_pages(browser, service, real_gated_checkpoint, real_sample, tmp_path):
    """Real X-rays at their own 299 px and at a detector's 3000 px, a real photograph, and the synthetic
    demo model's refusal: screenshots of each go to test-artifacts/screenshots/real-*.png."""
    import shutil

    import numpy as np
    from PIL import Image
    from skimage.data import camera

    from cxr_model.checkpoint import read_card, write_card

    fitted = sorted(real_sample.glob("*/images/*.png"))[::10]  # radiographs the gates were fitted on
    small = Image.open(fitted[3])
    large = Image.open(fitted[60]).convert("L").resize((3000, 3000), Image.Resampling.BICUBIC)
    demo = tmp_path / "demo"
    shutil.copytree(service.checkpoint, demo)
    card = read_card(demo)
    card.synthetic_demo, card.version = True, "0.0.1-demo"
    write_card(card, demo)
    s = Session(browser, service.base_url, "real", api_key=service.api_key)
    try:
        _rolled(service, real_gated_checkpoint, "0.0.1-real-gates")
        for name, picture in (("299px", small), ("3000px", large)):
            _upload(s, f"P-REAL-{name}", _png(picture))
            s.page.locator("#result article.result").wait_for()
            assert s.page.locator(".top-label").inner_text() in LABELS
            assert s.image_loaded("#result .view-annotated-image img")
            s.shot(f"result-{name}")
            s.page.locator(".view-switch label[for=view-gradcam]").click()
            assert s.image_loaded("#result .view-gradcam-image img")
            s.shot(f"gradcam-{name}")
        _upload(s, "P-REAL-PHOTO", _png(Image.fromarray(np.asarray(camera()))), gradcam=False)
        s.page.locator(".field:has(#image) .field-error").filter(has_text="does not look like").wait_for()
        assert s.page.locator("#result article.result").count() == 0
        s.shot("refused-photograph")
        _rolled(service, demo, "0.0.1-demo")
        _upload(s, "P-REAL-DEMO", _png(small), gradcam=False)
        s.page.locator("#image-error").filter(has_text="trained only on generated pictures").wait_for()
        assert "CXR_CHECKPOINT" in s.page.locator("#image-error").inner_text()
        s.shot("refused-by-the-synthetic-demo")
        assert not [e for e in s.errors if not e.startswith(("Failed to load resource", "Response Status Error Code"))]
    finally:
        s.close()
        _rolled(service, service.checkpoint, read_card(service.checkpoint).version)
