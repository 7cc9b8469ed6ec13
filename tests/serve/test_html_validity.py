"""Every page's HTML, as the service sends it, through the Nu HTML Checker (the W3C validator's
engine, vnu.jar): the new-prediction page empty, refused and with a result, a saved record, the
worklist, a patient search with results, model, monitoring, sign-in and not-found pages. No error
is allowed (htmx's attributes are written `data-hx-*`, the valid spelling htmx reads too)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.serve.helpers import chest_png, post_prediction

VNU = Path(__file__).resolve().parent / "checkers" / "node_modules" / "vnu-jar" / "build" / "dist" / "vnu.jar"


@pytest.fixture(scope="module")
def vnu() -> list[str]:
    java = shutil.which("java")
    if not VNU.exists() or java is None:
        message = "the Nu HTML Checker needs Java and vnu.jar (scripts/test.sh installs it with npm ci)"
        if os.environ.get("CXR_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return [java, "-jar", str(VNU), "--errors-only", "--format", "json"]


def pages(service) -> dict[str, str]:
    saved = service.predict(chest_png(80), save="1", patient_id="P-HTML-1")
    assert saved.status_code == 200, saved.text
    found = {
        "refused": post_prediction(service, None).text,
        "result": post_prediction(service, chest_png(81), patient_id="P-HTML-2").text,
    }
    for name, path in [
        ("new-prediction", "/"),
        ("record", f"/predictions/{saved.json()['prediction_id']}"),
        ("worklist", "/worklist"),
        ("patient-search", "/patients?patient_id=P-HTML-1"),
        ("model", "/model"),
        ("monitoring", "/monitoring"),
        ("sign-in", "/login"),
        ("not-found", "/no-such-page"),
    ]:
        found[name] = service.http.get(path, headers={"Accept": "text/html"}).text
    return found


def test_every_page_is_valid_html(service, vnu, tmp_path):
    files = []
    for name, html in pages(service).items():
        assert html.lstrip().lower().startswith("<!doctype html>"), name  # a whole page, not an error text
        files.append(tmp_path / f"{name}.html")
        files[-1].write_text(html)
    checked = subprocess.run([*vnu, *map(str, files)], capture_output=True, text=True, timeout=300)
    messages = json.loads(checked.stderr)["messages"]
    errors = [f"{Path(m['url']).name}:{m.get('lastLine')}: {m['message']}" for m in messages if m["type"] == "error"]
    assert not errors, "\n".join(errors)
    assert checked.returncode == 0 and len(files) == 10
