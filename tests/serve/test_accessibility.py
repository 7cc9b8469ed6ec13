"""Every page, as a clinician's browser draws it, checked with axe-core (the checker behind most
accessibility audits: WCAG 2.0-2.2 A and AA, plus its best practices), in light and dark colour
schemes: the new-prediction form empty, refused and with a result; a saved record; the worklist with
studies; a patient search with results; model, monitoring, sign-in and not-found pages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.serve.browser import Session
from tests.serve.helpers import chest_png

AXE = Path(__file__).resolve().parent / "checkers" / "node_modules" / "axe-core" / "axe.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.exists():
        message = "axe-core is not installed (scripts/test.sh installs it with npm ci)"
        if os.environ.get("CXR_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return AXE.read_text()


def violations(page, axe_source: str) -> list[str]:
    """axe-core's violations on the page as it is now, one readable line per rule and element."""
    page.evaluate(axe_source)
    found = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", TAGS)
    return [f"{v['id']} ({v['impact']}): {v['help']} at {n['target']}" for v in found["violations"] for n in v["nodes"]]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_passes_axe(browser, service, axe_source, scheme):
    saved = service.predict(chest_png(70), save="1", patient_id="P-A11Y-1")
    assert saved.status_code == 200, saved.text
    record = f"/predictions/{saved.json()['prediction_id']}"
    s = Session(browser, service.base_url, f"axe-{scheme}", color_scheme=scheme)
    found: dict[str, list[str]] = {}

    def check(name: str) -> None:
        s.page.wait_for_load_state("networkidle")
        s.shot(name.replace(" ", "-").replace(",", ""))
        found[name] = violations(s.page, axe_source)

    s.page.goto("/login")
    check("sign-in")
    s.page.fill("#api_key", service.api_key)
    s.page.click("form[action='/login'] button[type=submit]")
    s.page.wait_for_url(service.base_url + "/")
    check("new prediction")
    s.page.click("form[action='/predictions'] button[type=submit]")  # nothing chosen: refused
    s.page.locator("[role=alert]").first.wait_for()
    check("new prediction, refused")
    image = {"name": "c.png", "mimeType": "image/png", "buffer": chest_png(71)}
    s.page.set_input_files("input[type=file]", files=[image])
    s.page.fill("#patient_id", "P-A11Y-2")
    s.page.click("form[action='/predictions'] button[type=submit]")
    s.page.locator("meter").first.wait_for()
    check("new prediction, result")
    for name, path in [
        ("record", record),
        ("worklist", "/worklist"),
        ("patient search", "/patients?patient_id=P-A11Y-1"),
        ("model", "/model"),
        ("monitoring", "/monitoring"),
        ("not found", "/no-such-page"),
    ]:
        s.page.goto(path)
        check(name)
    s.close()
    assert len(found) == 10 and not any(found.values()), {k: v for k, v in found.items() if v}
