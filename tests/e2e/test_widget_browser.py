"""The embeddable contact form in a real chromium: a host page on another origin loads `/widget.js` from a real
`deskpilot serve` process, the customer posts a question and sees the reply appear, and nothing of another
customer's thread. Skipped only when Debian's chromium is not installed (`make browser` installs it)."""

from __future__ import annotations

import html
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.controllers.widget import widget_signature
from tests.support.server import ServerProcess, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
SECRET = "widget-browser-secret-0123456789"
CUSTOMER = "ada@example.com"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (run `make browser`)"),
]


class HostPage:
    """The operator's product: a page on its own origin with the widget's snippet in it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.html = b""
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(page.html)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def show(self, deskpilot: str, email: str) -> None:
        attributes = {
            "src": f"{deskpilot}/widget.js",
            "data-email": email,
            "data-name": "Ada Lovelace",
            "data-signature": widget_signature(SECRET, email),  # what the operator's backend computes
            "data-target": "#support",
            "data-poll": "3",
        }
        tag = " ".join(f'{key}="{html.escape(value)}"' for key, value in attributes.items())
        self.html = (
            "<!doctype html><html><head><title>Acme app</title></head><body><h1>Acme</h1>"
            f'<div id="support"></div><script {tag}></script></body></html>'
        ).encode()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def host() -> Iterator[HostPage]:
    page = HostPage()
    yield page
    page.stop()


@pytest.fixture(scope="module")
def server(database_url: str, host: HostPage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("widget-browser")
    env = {
        "DESKPILOT_DATABASE_URL": database_url,
        "DESKPILOT_DATA_DIR": str(root / "data"),
        "DESKPILOT_WIDGET_SECRET": SECRET,
        "DESKPILOT_WIDGET_ORIGINS": host.origin,
    }
    process = ServerProcess.serve(env, root / "serve.log", "--no-worker")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
async def page(server: ServerProcess) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = await browser.new_context()
        context.set_default_timeout(20_000)
        tab = await context.new_page()
        yield tab
        await browser.close()


async def test_the_widget_posts_a_question_and_shows_the_reply(
    page: Any, server: ServerProcess, host: HostPage, clean_db: asyncpg.Pool
) -> None:
    # Another customer's conversation, which must never show up.
    other = await clean_db.fetchval(
        """WITH c AS (INSERT INTO customers (email) VALUES ('bob@example.com') RETURNING id)
           INSERT INTO tickets (external_id, customer_id, channel, subject, body, raw_payload)
           SELECT 'bob-1', id, 'in_app', 'Bob', 'Bob asks about his salary export', '{}'::jsonb FROM c
           RETURNING id"""
    )
    await clean_db.execute(
        """INSERT INTO ticket_messages (ticket_id, direction, channel, author, body)
           VALUES ($1, 'outbound', 'in_app', 'agent', 'Bob''s private answer')""",
        other,
    )
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    host.show(server.base_url, CUSTOMER)
    await page.goto(host.origin)

    await page.get_by_label("Your question").fill("How do I download all my invoices as PDF?")
    await page.get_by_role("button", name="Send").click()
    mine = page.locator(".deskpilot-from-you")
    await mine.first.wait_for()
    assert await mine.first.inner_text() == "How do I download all my invoices as PDF?"
    assert "Sent" in await page.get_by_role("status").inner_text()

    ticket = await clean_db.fetchrow(
        """SELECT t.id, t.channel FROM tickets t JOIN customers c ON c.id = t.customer_id WHERE c.email = $1""",
        CUSTOMER,
    )
    assert ticket["channel"] == "in_app"
    # The reply as the in-app channel stores it (no delivery row governs it: visible at once).
    await clean_db.execute(
        """INSERT INTO ticket_messages (ticket_id, direction, channel, author, body)
           VALUES ($1, 'outbound', 'in_app', 'agent', $2)""",
        ticket["id"],
        "Go to Billing > Invoices and choose <b>Download all</b>.",
    )
    reply = page.locator(".deskpilot-from-support")
    await reply.first.wait_for()  # the thread refreshes every 3 s
    assert await reply.first.inner_text() == "Go to Billing > Invoices and choose <b>Download all</b>."  # text only
    assert await page.locator(".deskpilot-widget b").count() == 0
    content = await page.content()
    assert "Bob" not in content
    assert errors == []
