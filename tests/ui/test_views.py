"""Templates and view helpers, rendered directly (the routes are tested in tests/serve)."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from html import unescape
from html.parser import HTMLParser

import pytest

from cxr_model.annotate import caption
from serve.reading import WorklistFilters
from serve.worklist import BANDS, UrgencyPolicy, order
from ui.views import (
    HTMX_FILE,
    HTMX_SHA256,
    STATIC_DIR,
    TEMPLATE_DIR,
    PageRenderer,
    field_messages,
    headline_metrics,
    is_htmx,
    percent,
    probability,
    probability_rows,
    scope_rates,
)

NOTICE = "Decision support only - not for diagnostic use"
LABELS = ["COVID-19", "Lung Opacity", "Normal", "Viral Pneumonia"]
MODEL = {
    "name": "cxr-test",
    "version": "v1",
    "backbone": "densenet121",
    "task": "multiclass",
    "labels": LABELS,
    "thresholds": [],
    "weights_sha256": "ab" * 32,
    "preprocessing_version": "cxr-pre-1",
    "runtime": "onnx",
    "synthetic_demo": True,
}


class Tags(HTMLParser):
    """Collects (tag, attrs) pairs so tests check structure, not substrings."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


TOKEN = "t" * 43


class TokenRenderer:
    """What serve.pages does: every page gets the CSRF token for its forms."""

    def __init__(self):
        self.base = PageRenderer(NOTICE, "SYNTHETIC DEMO MODEL - not for clinical use")

    def render(self, template: str, **context) -> str:
        return self.base.render(template, **{"csrf_token": TOKEN, "auth_off": False, "user": None, **context})


@pytest.fixture
def renderer():
    return TokenRenderer()


def form(**changes):
    return {
        "patient_id": "",
        "explain": False,
        "save": False,
        "request_id": "req-12345678",
        "held_filename": None,
        "errors": {},
        **changes,
    }


def result(**changes):
    probabilities = {"COVID-19": 0.1, "Lung Opacity": 0.2, "Normal": 0.6, "Viral Pneumonia": 0.1}
    return {
        "patient_id": "P-1",
        "request_id": "req-1",
        "top_label": "Normal",
        "confidence": 0.6,
        "low_confidence": False,
        "rows": probability_rows(probabilities, LABELS, [], ["Normal"]),
        "model": MODEL,
        "annotated_src": "data:image/jpeg;base64,AAAA",
        "gradcam_src": None,
        "gradcam_label": None,
        "saved": False,
        "prediction_id": None,
        "save_error": None,
        "can_save": True,
        **changes,
    }


RECORD = {
    "prediction_id": "abc123",
    "patient_id": "P-1",
    "request_id": "req-1",
    "top_label": "Normal",
    "confidence": 0.6,
    "probabilities": {"COVID-19": 0.1, "Lung Opacity": 0.2, "Normal": 0.6, "Viral Pneumonia": 0.1},
    "positives": ["Normal"],
    "model": MODEL,
    "created_at": "2026-11-23T10:00:00+00:00",
    "images": {
        "original": "/api/v1/predictions/abc123/image?kind=original",
        "annotated": "/api/v1/predictions/abc123/image?kind=annotated",
    },
}
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
REVIEW = {
    "verdict": "disagree",
    "findings": ["COVID-19"],
    "reviewer": "dr-lee",
    "at": NOW,
    "comment": "Peripheral opacities.",
}
WORKLIST_RECORD = {
    "_id": "abc123",
    "patient_id": "P-1",
    "created_at": NOW - timedelta(minutes=30),
    "probabilities": {"COVID-19": 0.8, "Normal": 0.2},
    "top_label": "COVID-19",
    "confidence": 0.8,
    "created_by": "ward-7",
}
AGREEMENT = {
    "model_version": "v1",
    "model_name": "cxr-test",
    "reviewed": 2,
    "agreement": {"k": 1, "n": 2, "value": 0.5, "low": 0.09, "high": 0.91},
    "labels": [
        {
            "label": "COVID-19",
            "ppv": {"k": 1, "n": 1, "value": 1.0, "low": 0.21, "high": 1.0},
            "sensitivity": {"k": 0, "n": 0, "value": None, "low": None, "high": None},
        }
    ],
}
CARD = {
    "name": "cxr-test",
    "version": "v1",
    "backbone": "densenet121",
    "task": "multiclass",
    "labels": LABELS,
    "thresholds": [],
    "intended_use": "Decision support.",
    "created_at": "2026-11-23T09:00:00+00:00",
    "weights_sha256": "ab" * 32,
    "data_manifest_sha256": "cd" * 32,
    "code_version": "abc",
    "preprocessing": {"input_size": 224, "version": "cxr-pre-1"},
}

FULL_PAGES = {
    "new_prediction.html": {"form": form(), "result": None, "error": None},
    "patients.html": {"patient_id": "P-1", "items": [RECORD], "total": 1, "page": 1, "pages": 1, "error": None},
    "prediction.html": {
        "record": RECORD,
        "rows": probability_rows(RECORD["probabilities"], LABELS, [], ["Normal"]),
        "reviews": [REVIEW, REVIEW | {"verdict": "agree", "findings": ["Normal"], "reviewer": "dr-kim", "comment": ""}],
        "can_review": True,
        "user_name": "dr-lee",
    },
    "worklist.html": {
        "entries": order([WORKLIST_RECORD], NOW, UrgencyPolicy({"COVID-19": 3.0})),
        "total": 1,
        "filters": WorklistFilters(),
        "sources": ["ward-7"],
        "bands": BANDS,
        "pages": 1,
        "can_review": True,
        "user_name": "dr-lee",
        "max_wait_minutes": 240,
        "generated_at": NOW,
    },
    "monitoring.html": {"models": [AGREEMENT]},
    "model.html": {
        "card": CARD,
        "metrics": [("Accuracy", "90.0%")],
        "scope_rates": [("Blank", "40 of 40", "missed 0.0%")],
    },
    "message.html": {"title": "Prediction not found", "message": "No stored prediction has this ID."},
}


@pytest.mark.parametrize("template", sorted(FULL_PAGES))
def test_every_full_page_has_language_notice_nav_and_local_scripts_only(renderer, template):
    html = renderer.render(template, **FULL_PAGES[template])
    tags = Tags(html)
    assert tags.find("html", lang="en")
    assert NOTICE in html
    assert [s["src"] for s in tags.find("script")] == [f"/static/{HTMX_FILE}", "/static/app.js"]
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html), "no CDN or external URL in a page"
    assert tags.find("a", href="/patients") and tags.find("a", href="/model")
    for img in tags.find("img"):
        assert img.get("alt"), f"image without alt text in {template}"


def test_demo_banner_only_for_synthetic_models(renderer):
    assert "SYNTHETIC DEMO MODEL" in renderer.render("message.html", title="t", message="m", synthetic_demo=True)
    assert "SYNTHETIC DEMO MODEL" not in renderer.render("message.html", title="t", message="m")


def test_study_form_posts_without_javascript_and_binds_labels(renderer):
    tags = Tags(renderer.render("new_prediction.html", **FULL_PAGES["new_prediction.html"]))
    (study_form,) = tags.find("form", id="prediction-form")
    assert study_form["action"] == "/predictions" and study_form["method"] == "post"
    assert study_form["enctype"] == "multipart/form-data" and study_form["data-hx-post"] == "/predictions"
    assert study_form["data-hx-target"] == "#result" and study_form["data-hx-indicator"] == "#prediction-busy"
    for field_id in ("patient_id", "image"):
        assert tags.find("label", **{"for": field_id}) and tags.find("input", id=field_id)
    assert tags.find("progress", id="upload-progress")
    assert tags.find("input", type="hidden", name="csrf_token", value=TOKEN)
    assert tags.find("section", id="result", **{"aria-live": "polite"})


def test_user_text_is_escaped_everywhere(renderer):
    hostile = '<script>alert(1)</script>"'
    html = renderer.render(
        "new_prediction.html",
        form=form(patient_id=hostile, errors={"patient_id": hostile}),
        result=None,
        error={"patient_id": hostile},
    )
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    html = renderer.render("_patient_results.html", patient_id=hostile, items=[], total=0, page=1, pages=0, error=None)
    assert "<script>alert" not in html


def test_field_errors_render_next_to_their_fields_and_as_out_of_band_swaps(renderer):
    errors = {"patient_id": "patient_id is required", "image": "the file is not a PNG or JPEG image"}
    page = Tags(renderer.render("new_prediction.html", form=form(errors=errors), result=None, error=errors))
    assert page.find("input", id="patient_id", **{"aria-invalid": "true"})
    fragment = renderer.render("_prediction_errors.html", form=form(errors=errors), error=errors)
    tags = Tags(fragment)
    assert "<html" not in fragment
    assert tags.find("div", role="alert")
    for name, message in errors.items():
        (element,) = tags.find("p", id=f"{name}-error")
        assert element["data-hx-swap-oob"] == "true"
        assert message in fragment


def test_result_partial_shows_a_bar_per_label_and_a_fresh_request_id(renderer):
    fragment = renderer.render("_prediction_result.html", form=form(request_id="next-request-1"), result=result())
    tags = Tags(fragment)
    meters = tags.find("meter")
    assert [float(m["value"]) for m in meters] == [0.1, 0.2, 0.6, 0.1]
    assert tags.find("input", id="request_id", value="next-request-1", **{"data-hx-swap-oob": "true"})
    assert tags.find("img", src="data:image/jpeg;base64,AAAA")
    assert not tags.find("input", id="view-gradcam"), "no Grad-CAM toggle without a Grad-CAM image"
    assert tags.find("form", action="/predictions/save")
    assert tags.find("input", type="hidden", name="csrf_token", value=TOKEN)
    with_cam = Tags(
        renderer.render(
            "_result.html", result=result(gradcam_src="data:image/jpeg;base64,BBBB", gradcam_label="Normal")
        )
    )
    assert with_cam.find("input", id="view-gradcam", type="radio")
    assert with_cam.find("label", **{"for": "view-gradcam"})


def test_low_confidence_is_flagged_on_result_and_list(renderer):
    assert "Low confidence" not in renderer.render("_result.html", result=result())
    assert "Low confidence" in renderer.render("_result.html", result=result(low_confidence=True))
    listing = renderer.render(
        "_patient_results.html",
        patient_id="P-1",
        items=[{**RECORD, "low_confidence": True}],
        total=1,
        page=1,
        pages=1,
        error=None,
    )
    assert "low confidence" in listing


def test_saved_and_failed_saves_say_so(renderer):
    saved = renderer.render("_result.html", result=result(saved=True, prediction_id="abc", can_save=False))
    assert Tags(saved).find("a", href="/predictions/abc") and "Save to record" not in saved
    failed = renderer.render(
        "_result.html", result=result(save_error="database unavailable (ServerSelectionTimeoutError)")
    )
    assert "Prediction shown, not saved" in failed and "Retry save" in failed


def test_patient_results_paginate_with_links_that_work_without_javascript(renderer):
    html = renderer.render(
        "_patient_results.html", patient_id="P 1&x", items=[RECORD], total=25, page=2, pages=3, error=None
    )
    tags = Tags(html)
    hrefs = [a["href"] for a in tags.find("a") if "page=" in a.get("href", "")]
    assert hrefs == ["/patients?patient_id=P%201%26x&page=1", "/patients?patient_id=P%201%26x&page=3"]
    assert tags.find("img", src="/predictions/abc123/thumbnail")
    assert tags.find("a", href="/predictions/abc123")


def test_field_messages_speak_to_clinicians_and_keep_unknown_texts():
    messages = field_messages(
        [
            ("patient_id", "missing_patient_id", "patient_id is required"),
            ("image", "weird_code", "something odd"),
            ("image", "not_an_image", "later"),
        ]
    )
    assert messages["patient_id"].startswith("Enter the patient ID") and messages["image"] == "something odd"


def test_view_helpers():
    assert percent(0.4567) == "45.7%" and percent(None) == "-"
    rows = probability_rows({"b": 0.7, "a": 0.2}, ["a", "b"], [0.5, 0.5], ["b"])
    assert [(r["label"], r["positive"], r["threshold"]) for r in rows] == [("a", False, 0.5), ("b", True, 0.5)]
    metrics = headline_metrics({"test": {"accuracy": 0.9, "accuracy_ci95": [0.8, 0.95], "n": 20}})
    assert metrics == [("Accuracy", "90.0% (95% CI 80.0% - 95.0%)"), ("Test images", "20")]
    rates = {
        "chest_radiographs": {"test": {"n": 100, "refused": 1, "false_rejection_rate": 0.01}},
        "out_of_scope": {"greyscale_photo": {"n": 40, "refused": 39, "miss_rate": 0.025}},
    }
    assert scope_rates({"rates": rates}) == [
        ("Chest radiographs, test split", "1 of 100", "false rejection 1.0%"),
        ("Greyscale photo", "39 of 40", "missed 2.5%"),
    ]
    assert scope_rates({}) == []
    assert is_htmx({"hx-request": "true"})
    assert not is_htmx({"hx-request": "true", "hx-history-restore-request": "true"})
    assert not is_htmx({})


def test_vendored_htmx_is_the_pinned_file_and_nothing_loads_from_a_cdn():
    assert hashlib.sha256((STATIC_DIR / HTMX_FILE).read_bytes()).hexdigest() == HTMX_SHA256
    assert HTMX_FILE in (STATIC_DIR / "VENDORED.md").read_text()
    for path in list(TEMPLATE_DIR.glob("*.html")) + [STATIC_DIR / "app.js", STATIC_DIR / "app.css"]:
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|unpkg|jsdelivr", text), f"external reference in {path.name}"
        assert " on" + "click=" not in text and "style=" not in text, f"inline handler or style in {path.name}"


def test_every_page_says_when_authentication_is_off_and_who_is_signed_in(renderer):
    off = renderer.render("message.html", title="t", message="m", auth_off=True)
    assert "Authentication is off: local demo only" in off and "Sign out" not in off
    on = renderer.render("message.html", title="t", message="m", user="dr-<b>")
    assert "Authentication is off" not in on
    assert "Signed in as <strong>dr-&lt;b&gt;</strong>" in on and 'action="/logout"' in on
    assert f'name="csrf_token" value="{TOKEN}"' in on  # signing out is a CSRF-protected post


@pytest.mark.parametrize(
    "value, shown",
    [
        (1.0, ">99.9%"),
        (0.99996, ">99.9%"),
        (0.9995, ">99.9%"),
        (0.9994, "99.9%"),
        (0.5, "50.0%"),
        (0.0006, "0.1%"),
        (0.0004, "<0.1%"),
        (0.0, "<0.1%"),
        (None, "-"),
    ],
)
def test_a_probability_never_reads_as_a_certainty(value, shown):
    assert probability(value) == shown


def test_pages_and_pictures_show_a_near_certain_prediction_without_claiming_certainty(renderer):
    """The bars and the burnt-in caption of a calibrated 0.99997 prediction."""
    rows = probability_rows({"COVID-19": 0.99997, "Normal": 0.00003}, ["COVID-19", "Normal"])
    html = unescape(renderer.render("_probabilities.html", rows=rows, model={"task": "softmax"}))
    assert ">99.9%" in html and "<0.1%" in html and "100.0%" not in html and "0.0%" not in html
    assert caption("COVID-19", 0.99997) == "COVID-19 >99.9%"
