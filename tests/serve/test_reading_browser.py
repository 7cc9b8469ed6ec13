"""A radiologist in a real browser (Debian's chromium): the worklist in the expected order, live
refresh that keeps the reader's place, keyboard navigation, a review that takes the study off the
list, and the monitoring page's figures moving with it; and the worklist without JavaScript."""

from __future__ import annotations

import re
import uuid
from datetime import timezone

from serve.records import now
from serve.settings import ServeSettings
from serve.worklist import order
from tests.serve.browser import Session
from tests.serve.test_reading import send


def expected_order(db, source: str) -> list[str]:
    """The reading order, worked out here from the stored records with the shipped policy."""
    records = list(db["predictions"].find({"created_by": source, "review": {"$exists": False}}))
    for record in records:  # this client reads dates without their zone; the service's are UTC
        record["created_at"] = record["created_at"].replace(tzinfo=timezone.utc)
    return [e.patient_id for e in order(records, now(), ServeSettings().urgency_policy())]


def listed(s: Session) -> list[str]:
    return [t.strip() for t in s.page.locator("#worklist tbody tr td:nth-child(4) > .mono").all_inner_texts()]


def reviewed_count(service, version: str) -> int:
    models = service.http.get("/api/v1/monitoring/agreement").json()["models"]
    return next((m["reviewed"] for m in models if m["model_version"] == version), 0)


def test_a_radiologist_reads_the_worklist_in_order_and_reviews_a_study(browser, service, keys, db):  # noqa: F811
    ward = f"ward-{uuid.uuid4().hex[:6]}"
    _, ward_token = keys.create(ward, "clinician", 10_000)
    _, reader_token = keys.create(f"dr-{uuid.uuid4().hex[:6]}", "radiologist", 10_000)
    from tests.serve.helpers import client

    with client(service.base_url, timeout=120, headers={"Authorization": f"Bearer {ward_token}"}) as http:
        for i in range(3):
            send(http, 960 + i, f"BR-{i}-{uuid.uuid4().hex[:4]}")
        version = service.http.get("/api/v1/model").json()["version"]
        before = reviewed_count(service, version)
        s = Session(browser, service.base_url, "worklist", api_key=reader_token)
        try:
            s.page.get_by_role("link", name="Worklist").click()
            s.page.get_by_label("Sent by").select_option(ward)
            s.page.get_by_role("button", name="Filter").click()
            s.page.wait_for_url(re.compile(r"source=" + ward))
            assert listed(s) == expected_order(db, ward)
            s.shot("ordered")

            # Keyboard: j twice lands on the second study's link.
            s.page.locator("h1").click()
            s.page.keyboard.press("j")
            s.page.keyboard.press("j")
            second = s.page.evaluate("document.activeElement.id")
            assert second.startswith("open-") and second == s.page.locator("a.worklist-open").nth(1).get_attribute("id")

            # A new study arrives while the reader sits on the second one: the list refreshes in
            # place (no navigation) and the focus stays on the same study.
            url = s.page.url
            send(http, 970, f"BR-NEW-{uuid.uuid4().hex[:4]}")
            s.page.locator("#worklist tbody tr").nth(3).wait_for(timeout=40_000)
            assert s.page.url == url and s.page.evaluate("document.activeElement.id") == second
            assert listed(s) == expected_order(db, ward)
            s.shot("refreshed")

            # Read the first study, disagree, and it leaves the worklist.
            first = listed(s)[0]
            s.page.locator("#worklist tbody tr").first.get_by_role("button", name=re.compile("^Read")).click()
            s.page.wait_for_url(re.compile(r"/predictions/[0-9a-f]+#review$"))
            assert "You are reading this study" in s.page.locator("#review").inner_text()
            s.page.get_by_label("Disagree").check()
            top = s.page.locator(".top-label").inner_text()
            s.page.locator(f"#review input[name='finding-0']:not([value='{top}'])").first.check()
            s.page.get_by_label("Comment (optional)").fill("Reviewed in the browser test")
            s.shot("review-form")
            s.page.get_by_role("button", name="Record review").click()
            s.page.wait_for_url(re.compile(r"/worklist$"))
            s.page.goto(f"/worklist?source={ward}")
            assert first not in listed(s) and len(listed(s)) == 3
            s.shot("after-review")

            s.page.get_by_role("link", name="Monitoring").click()
            assert version in s.page.locator("main").inner_text()
            assert reviewed_count(service, version) == before + 1
            s.shot("monitoring")
            assert s.fits_width() and s.errors == []
        finally:
            s.close()


def test_the_worklist_works_without_javascript(browser, service, keys):  # noqa: F811
    _, token = keys.create(f"dr-{uuid.uuid4().hex[:6]}", "radiologist", 10_000)
    s = Session(browser, service.base_url, "worklist-nojs", javascript=False, api_key=token)
    try:
        s.page.goto("/worklist")
        s.page.get_by_label("Urgency").select_option("urgent")
        s.page.get_by_role("button", name="Filter").click()
        s.page.wait_for_url(re.compile(r"band=urgent"))
        bands = s.page.locator("#worklist .band-tag").all_inner_texts()
        assert all(b == "Urgent" for b in bands)
        s.shot("filtered")
        assert s.errors == []
    finally:
        s.close()
