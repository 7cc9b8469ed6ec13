"""A real browser for the tests: Debian's chromium through playwright (never a downloaded one), and
one browser context at a time that records every console error and failed load."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 60_000


class Session:
    """One browser context; records console errors so a broken script fails the test."""

    def __init__(
        self,
        browser,
        base_url: str,
        name: str,
        javascript: bool = True,
        viewport=(1366, 768),
        api_key: str | None = None,
        color_scheme: str = "light",
    ):
        self.context = browser.new_context(
            java_script_enabled=javascript,
            base_url=base_url,
            viewport={"width": viewport[0], "height": viewport[1]},
            color_scheme=color_scheme,
        )
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.name, self.step, self.errors = name, 0, []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # A blocked or failed subresource (a CSP refusal among them) counts too, with or without JS;
        # a load the browser itself abandoned because the page navigated on does not.
        self.page.on("requestfailed", self._request_failed)
        if api_key:  # sign in as a clinician does: paste the key once, the session cookie does the rest
            self.page.goto("/login")
            self.page.fill("#api_key", api_key)
            self.page.click("form[action='/login'] button[type=submit]")
            self.page.wait_for_url(base_url + "/")

    def _request_failed(self, request) -> None:
        if request.failure != "net::ERR_ABORTED":
            self.errors.append(f"{request.url}: {request.failure}")

    def shot(self, what: str) -> None:
        self.step += 1
        self.page.screenshot(path=str(SHOTS / f"{self.name}-{self.step:02d}-{what}.png"), full_page=True)

    def fits_width(self) -> bool:
        return self.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    def image_loaded(self, selector: str, timeout_s: float = 30) -> bool:
        # Polled from Python: the element may exist before its image has arrived, and
        # in-page waiting helpers need the page's own scripting, which some tests turn off.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0"):
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.context.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def launch(playwright):
    """Debian's chromium, or a skip (a failure where CXR_REQUIRE_BROWSER is set, as on CI)."""
    if not CHROMIUM.exists():
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CXR_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    SHOTS.mkdir(parents=True, exist_ok=True)
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
