"""The trace viewer and console in a real chromium, served by a real `deskpilot serve` process (no worker).

Skipped only when Debian's chromium is not installed (`make browser` installs it).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.plugin import session_cookie_value
from core.settings import Settings
from tests.support.server import REPO, ServerProcess
from tests.support.trace_fixtures import HOSTILE_BODY, SeededTraces, seed_traces

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-admin-token-9f8e7d6c5b4a"
SCREENSHOT = REPO / "docs" / "trace-viewer.png"


def screenshot_path(tmp_path: Path) -> Path:
    """The README's screenshot is written when missing or asked for (DESKPILOT_UPDATE_SCREENSHOT=1), so a
    plain test run leaves the working tree clean."""
    if not SCREENSHOT.exists() or os.environ.get("DESKPILOT_UPDATE_SCREENSHOT") == "1":
        return SCREENSHOT
    return tmp_path / "trace-viewer.png"


pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (run `make browser`)"),
]


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("trace-browser")
    env = {
        "DESKPILOT_DATABASE_URL": database_url,
        "DESKPILOT_DATA_DIR": str(root / "data"),
        "DESKPILOT_ADMIN_TOKEN": TOKEN,
    }
    process = ServerProcess.serve(env, root / "serve.log", "--no-worker")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def seeded(clean_db: asyncpg.Pool) -> SeededTraces:
    return await seed_traces(clean_db)


class Recorder:
    """Every request the page makes and every console error (a CSP violation shows up as one)."""

    def __init__(self, page: Any) -> None:
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)


@pytest.fixture
async def page(browser: Any, server: ServerProcess) -> AsyncIterator[Any]:
    """A signed-in page: the admin cookie as /login sets it."""
    context = await browser.new_context(base_url=server.base_url, viewport={"width": 1280, "height": 900})
    await context.add_cookies(
        [
            {
                "name": "deskpilot_admin",
                "value": session_cookie_value(Settings(admin_token=TOKEN)),
                "url": server.base_url,
                "httpOnly": True,
                "sameSite": "Strict",
            }
        ]
    )
    context.set_default_timeout(15_000)
    tab = await context.new_page()
    yield tab
    await context.close()


async def test_resolved_trace_shows_timeline_retrieval_and_confidence(
    page: Any, seeded: SeededTraces, tmp_path: Path
) -> None:
    recorder = Recorder(page)
    await page.goto(f"/traces/{seeded.resolved}")
    assert await page.locator("h1").inner_text() == "Wrong VAT number on my invoice"

    rows = page.locator("ol.timeline .tl-row")
    assert await rows.count() == 8
    nodes = [await rows.nth(i).locator(".tl-node").inner_text() for i in range(8)]
    assert nodes == [
        "classify",
        "prioritize",
        "dispatch",
        "load_context",
        "retrieve",
        "draft",
        "score",
        "deliver",
    ]
    for node in nodes:
        assert await page.locator(f".tl-fill.node-{node}").is_visible()
    # Bars are proportional to the durations: retrieve (46 ms) draws longer than dispatch (4 ms).
    retrieve = await page.locator(".tl-fill.node-retrieve").bounding_box()
    dispatch = await page.locator(".tl-fill.node-dispatch").bounding_box()
    assert retrieve["width"] > 5 * dispatch["width"]

    items = page.locator("table.retrieved tbody tr")
    assert await items.count() == 3
    assert await items.first.is_visible()
    assert "Invoice shows the wrong VAT number" in await items.first.inner_text()
    assert "past resolution" in await items.first.inner_text()
    assert "KB chunk" in await items.nth(1).inner_text()

    # A citation in the draft jumps to its retrieved item.
    citation = page.locator("ol.citations a").first
    assert await citation.inner_text() == "Invoice shows the wrong VAT number"
    await citation.click()
    assert page.url.endswith("#att1-item1")

    meter = page.locator("svg.meter")
    assert await meter.is_visible()
    assert await page.locator("data.confidence").first.get_attribute("value") == "0.91"
    assert await page.locator("svg.meter line.threshold").count() == 2
    breakdown = page.locator("table.breakdown tbody tr")
    assert await breakdown.count() == 5
    # Largest contribution first.
    assert "retrieval_similarity" in await breakdown.first.inner_text()
    assert "coverage" in await page.locator("table.breakdown").inner_text()
    assert await page.locator(".node .badge.deliver").first.is_visible()
    assert "sent" in await page.locator("table.deliveries").inner_text()

    # The app's own stylesheet applied under the CSP, and the CSP blocked nothing of ours.
    topbar = await page.locator(".topbar").evaluate("el => getComputedStyle(el).backgroundColor")
    assert topbar == "rgb(23, 32, 43)"
    assert not [e for e in recorder.console_errors if "Content Security Policy" in e], recorder.console_errors

    await page.goto(f"/traces/{seeded.resolved}")
    await page.screenshot(path=str(screenshot_path(tmp_path)), full_page=True)


async def test_escalated_trace_shows_decision_and_reasons(page: Any, seeded: SeededTraces) -> None:
    await page.goto(f"/traces/{seeded.escalated}")
    decision = page.locator("section.node", has=page.locator("h3 code", has_text=re.compile("^escalate$")))
    assert await decision.is_visible()
    text = await decision.inner_text()
    assert "escalate" in text
    assert "demands a refund: the agent never promises money" in text
    assert "re-queued for another cycle" in await page.locator("#pipeline-state").inner_text()
    risks = await page.locator("ul.risks").inner_text()
    assert "legal threat" in risks
    assert await page.locator("svg.meter rect.fill.escalate").count() == 1
    # The reader's view: one entry per question, the one nothing answered marked as handed over.
    questions = page.locator("ol.reading > li")
    assert await questions.count() == 2
    assert await page.locator("ol.reading > li.handed-over").count() == 1
    assert await questions.first.locator(".quote").count() == 2  # the section and its article's opening paragraph
    assert await questions.first.locator(".quote a").is_visible()  # the section links to its retrieved row


async def test_queued_ticket_waits_for_a_worker(page: Any, seeded: SeededTraces) -> None:
    await page.goto(f"/traces/{seeded.queued}")
    assert await page.locator("#pipeline-state").inner_text() == "queued, waiting for a worker"
    assert await page.locator("details.attempt").count() == 0

    await page.goto(f"/traces/{seeded.running}")
    assert "running" in await page.locator("#pipeline-state").inner_text()
    assert await page.locator("ol.timeline .tl-row.pending").count() == 4


async def test_hostile_ticket_text_is_shown_not_run(page: Any, seeded: SeededTraces) -> None:
    recorder = Recorder(page)
    for path in (f"/traces/{seeded.hostile}", "/console/tickets", "/console/review", "/"):
        await page.goto(path)
        await page.wait_for_load_state("networkidle")
        assert await page.evaluate("window.__pwned") is None, path
    await page.goto(f"/traces/{seeded.hostile}")
    await page.wait_for_load_state("networkidle")
    assert await page.locator("#ticket-body").inner_text() == HOSTILE_BODY
    assert "<script>window.__pwned=3</script>Export fix" in await page.locator("table.retrieved").inner_text()
    assert await page.locator("main img, main script, main a[href^='javascript:']").count() == 0
    assert await page.locator("main a[href*='127.0.0.1:9']").count() == 0
    assert not [url for url in recorder.requests if ":9/" in url], recorder.requests
    assert all(url.startswith(page.url.split("/traces")[0]) for url in recorder.requests), recorder.requests


async def test_console_lists_tickets_and_opens_a_trace(page: Any, seeded: SeededTraces) -> None:
    await page.goto("/")
    assert "resolved" in await page.locator(".counts").first.inner_text()
    await page.get_by_role("link", name="Wrong VAT number on my invoice").first.click()
    await page.wait_for_url(f"**/traces/{seeded.resolved}")
    assert await page.locator("h1").inner_text() == "Wrong VAT number on my invoice"

    await page.goto("/console/tickets")
    assert await page.locator("table.tickets tbody tr").count() == 5
    await page.select_option("select[name=status]", "resolved")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url("**/console/tickets?*status=resolved*")
    assert await page.locator("table.tickets tbody tr").count() == 2

    await page.goto("/console/review")
    subjects = await page.locator("table.tickets a.subject").all_inner_texts()
    assert subjects[0] == "Refund me now or I call my lawyer"  # oldest first
    assert len(subjects) == 2
    await page.locator("table.tickets a.subject").first.click()
    await page.wait_for_url(f"**/traces/{seeded.escalated}")


async def test_login_with_the_admin_token(browser: Any, server: ServerProcess, seeded: SeededTraces) -> None:
    context = await browser.new_context(base_url=server.base_url)
    context.set_default_timeout(15_000)
    try:
        page = await context.new_page()
        await page.goto(f"/traces/{seeded.resolved}")
        assert re.search(r"/login\?next=/traces/", page.url)
        await page.fill("#token", "not-the-token")
        await page.get_by_role("button", name="Sign in").click()
        assert "That token is not valid." in await page.locator("[role=alert]").inner_text()

        await page.fill("#token", TOKEN)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(f"**/traces/{seeded.resolved}")
        assert TOKEN not in page.url
        assert await page.locator("h1").inner_text() == "Wrong VAT number on my invoice"
        cookie = next(c for c in await context.cookies() if c["name"] == "deskpilot_admin")
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert "deskpilot_admin" not in await page.evaluate("document.cookie")

        await page.get_by_role("button", name="Log out").click()
        await page.wait_for_url("**/login")
        await page.goto("/console")
        assert "/login" in page.url
    finally:
        await context.close()


async def test_reviewer_rejects_from_the_trace_page(page: Any, seeded: SeededTraces, clean_db: asyncpg.Pool) -> None:
    await page.goto("/console/review")
    await page.get_by_role("link", name="Refund me now or I call my lawyer").click()
    await page.wait_for_url(f"**/traces/{seeded.escalated}")
    assert "refund request" in await page.locator("#review-text").input_value()
    await page.fill("#review-note", "handled by phone")
    await page.select_option("#review-reason", "should_escalate")
    await page.get_by_role("button", name="Reject").click()
    await page.wait_for_url("**reviewed=reject")
    assert await page.locator(".notice.ok").inner_text() == "Review recorded: reject."
    assert await page.locator("#review").count() == 0
    assert "handled by phone" in await page.locator("details.attempt").last.inner_text()
    assert await clean_db.fetchval("SELECT action FROM reviews WHERE ticket_id = $1", seeded.escalated) == "reject"
    await page.goto("/console/review")
    assert await page.locator("table.tickets a.subject").all_inner_texts() == [
        "Export broken <b>urgent</b> <img src=http://127.0.0.1:9/subject.png>"
    ]


async def test_operator_switches_modes_on_the_go_live_page(page: Any, clean_db: asyncpg.Pool) -> None:
    recorder = Recorder(page)
    await page.goto("/console/go-live")
    assert await page.locator("h1").inner_text() == "Go live"
    assert await page.locator("#go-live-report tbody tr").count() == 4
    await page.select_option("#mode-deployment", "shadow")
    await page.get_by_role("button", name="Switch").click()
    await page.wait_for_url("**/console/go-live?switched=*")
    assert await page.locator(".notice.ok").inner_text() == "Mode set: deployment shadow."
    billing = page.locator("#go-live-report tbody tr", has=page.get_by_label("Mode for billing"))
    await billing.get_by_label("Mode for billing").select_option("live")
    await billing.get_by_role("button", name="Set").click()
    await page.wait_for_url("**switched=billing+live")
    rows = await clean_db.fetch("SELECT scope, from_value, to_value, actor FROM audit_log ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("*", "live", "shadow", "console session"),
        ("billing", "inherit", "live", "console session"),
    ]
    assert await page.locator("#audit-log tbody tr").count() == 2
    assert recorder.console_errors == []
