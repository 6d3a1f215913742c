"""The console's Content gaps page in a real chromium, served by a real `deskpilot serve` process (no worker):
reached from the nav, the onboarding topics shown, hostile subjects shown as text, nothing blocked by the CSP.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.e2e.test_trace_browser import CHROMIUM, Recorder, browser, page, server  # noqa: F401 (fixtures)
from tests.support.agent_graph import new_ticket

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (run `make browser`)"),
]

HOSTILE_SUBJECT = "Calendar <img src=x onerror=alert(1)> sync fails"


async def test_content_gaps_page_in_chromium(page: Any, clean_db: asyncpg.Pool) -> None:  # noqa: F811
    blockers = [
        ("Google Calendar will not connect", "Connecting Google Calendar fails during setup."),
        (HOSTILE_SUBJECT, "Setting up: the Google Calendar sync fails every time we connect it."),
        ("Invitations never arrive", "We invited colleagues during setup and no invitation mail arrives."),
    ]
    for i, (subject, body) in enumerate(blockers):
        await new_ticket(clean_db, subject=subject, body=body, email=f"b{i}@example.com")
    await clean_db.execute("UPDATE tickets SET category = 'onboarding'")
    tab = page
    recorder = Recorder(tab)
    await tab.goto("/console")
    await tab.click("nav >> text=Content gaps")
    await tab.wait_for_url("**/console/content-gaps")
    assert await tab.get_attribute('nav a[href="/console/content-gaps"]', "aria-current") == "page"
    assert "No tickets" in await tab.inner_text("#gaps")
    topics = tab.locator("#category-topics tbody tr")
    assert await topics.count() == 2
    first = await topics.nth(0).inner_text()
    assert "calendar" in first and HOSTILE_SUBJECT in first  # the text itself, not an image
    assert await tab.locator("#category-topics img").count() == 0
    await tab.select_option("#gaps-category", "billing")
    await tab.click("form >> text=Show")
    await tab.wait_for_url("**/console/content-gaps?*category=billing*")
    assert "No tickets" in await tab.inner_text("#blockers")
    assert not [e for e in recorder.console_errors if "Content Security Policy" in e], recorder.console_errors
    assert all(url.startswith(tab.url.split("/console")[0]) for url in recorder.requests)
