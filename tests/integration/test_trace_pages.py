"""The trace viewer and console through the real app: the JSON trace's data, escaped, behind the token."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from markupsafe import escape

from app.web.security import CONTENT_SECURITY_POLICY
from tests.support.trace_fixtures import HOSTILE_BODY, SeededTraces, seed_traces


def esc(text: str) -> str:
    """Text as Jinja's autoescape writes it."""
    return str(escape(text))


TOKEN = "trace-pages-admin-token-0123456789"


@pytest.fixture
async def seeded(clean_db: asyncpg.Pool) -> SeededTraces:
    return await seed_traces(clean_db)


def csrf_from(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert match, "the page has no CSRF field"
    return match.group(1)


async def test_page_renders_what_the_json_trace_holds(client: Any, seeded: SeededTraces) -> None:
    for ticket_id in (seeded.resolved, seeded.escalated, seeded.running, seeded.hostile):
        data = (await client.get(f"/api/tickets/{ticket_id}/trace")).json()
        page = await client.get(f"/traces/{ticket_id}")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        text = page.text
        assert esc(data["ticket"]["subject"]) in text
        assert esc(data["ticket"]["body"]) in text
        for entry in data["status_history"]:
            assert esc(entry["reason"]) in text
        for attempt in data["attempts"]:
            if attempt["confidence"] is not None:
                assert f'value="{attempt["confidence"]}"' in text
            for step in attempt["steps"]:
                assert f"<code>{esc(step['node'])}</code>" in text
                output = step["output"]
                if step["node"] == "retrieve":
                    for item in output["items"]:
                        assert esc(item["title"]) in text
                        assert esc(item["preview"]) in text
                    for question in output.get("questions") or []:  # the reader's view, question by question
                        assert esc(question["question"]) in text
                        for unit in question["units"]:
                            assert esc(unit) in text
                    if output.get("read_across"):  # a ticket read in another language than the help centre's
                        across = output["read_across"]
                        assert "Read across languages" in text
                        for value in (across["ticket_language"], across["help_centre_language"], across["model"]):
                            assert f"<code>{esc(value)}</code>" in text
                if step["node"] == "score":
                    assert f'value="{output["confidence"]}"' in text
                    for signal in output["breakdown"]:
                        assert esc(signal) in text
                    assert f'value="{output["thresholds"]["review"]}"' in text
                    assert f'value="{output["thresholds"]["auto_resolve"]}"' in text
                if step["node"] in ("deliver", "flag_for_review", "escalate"):
                    for reason in output["reasons"]:
                        assert esc(reason) in text
            for delivery in attempt["deliveries"]:
                assert esc(delivery["idempotency_key"]) in text


async def test_only_a_ticket_read_across_languages_says_so(client: Any, seeded: SeededTraces) -> None:
    assert "Read across languages" in (await client.get(f"/traces/{seeded.escalated}")).text
    assert "Read across languages" not in (await client.get(f"/traces/{seeded.resolved}")).text


async def test_the_reader_s_view_of_each_question_is_shown_with_what_it_quoted(
    client: Any, seeded: SeededTraces
) -> None:
    text = (await client.get(f"/traces/{seeded.escalated}")).text
    reading = text[text.index('<ol class="reading">') : text.index("</ol>", text.index('<ol class="reading">'))]
    answered, handed = reading.split('<li class="question')[1:]
    assert esc("How long does a refund take?") in answered and "handed over" not in answered
    # The chosen passage links to its row among the retrieved items; the lead read beside it says where it came from.
    anchor = re.search(r'<tr id="(att1-item\d+)"', text)
    assert anchor and f'<a href="#{anchor.group(1)}">Refund policy</a>' in answered
    assert "Refunds are issued by the billing team within 5 business days." in answered
    assert "Refunds at a glance" in answered and "Every refund goes to the card charged." in answered
    assert "(read from its article," in answered
    assert '<data value="0.712">0.712</data>' in answered and "0.192" in answered  # score; ahead of 0.52 by
    assert esc("Will you pay our lawyer's fees?") in handed and "handed over" in handed
    assert "No passage answers it." in handed
    # The lead is cited by its title even though no search returned it.
    citations = text[text.index('<ol class="citations">') :]
    assert re.search(r"Refunds at a glance <span class=\"mono\">kb-3#0</span>", citations)
    # A trace whose reader found nothing to read (a past resolution grounded it) has no such list.
    assert '<ol class="reading">' not in (await client.get(f"/traces/{seeded.resolved}")).text


async def test_resolved_trace_links_citations_to_retrieved_items(client: Any, seeded: SeededTraces) -> None:
    text = (await client.get(f"/traces/{seeded.resolved}")).text
    anchors = set(re.findall(r'<tr id="(att1-item\d+)"', text))
    assert len(anchors) == 3
    cited = re.findall(r'<a href="#(att1-item\d+)">([^<]+)</a>', text)
    assert [title for _, title in cited] == [
        "Invoice shows the wrong VAT number",
        "Downloading past invoices",
    ]
    assert {anchor for anchor, _ in cited} <= anchors
    # Timeline: one bar per node, each linking to the node's section.
    for node in (
        "classify",
        "prioritize",
        "dispatch",
        "load_context",
        "retrieve",
        "draft",
        "score",
        "deliver",
    ):
        assert re.search(rf'<a href="#att1-{node}-\d+" class="tl-node">{node}</a>', text)
    assert "KB chunk" in text
    assert "past resolution" in text
    assert "0.91" in text
    assert "auto" in text


async def test_queued_and_running_tickets_say_where_they_are(client: Any, seeded: SeededTraces) -> None:
    queued = (await client.get(f"/traces/{seeded.queued}")).text
    assert "queued, waiting for a worker" in queued
    assert "Resolution attempts (0)" in queued
    running = (await client.get(f"/traces/{seeded.running}")).text
    assert 'class="state running"' in running
    assert "<code>dispatch</code>" in running
    for pending in ("load_context", "retrieve", "draft", "score"):
        assert f'<span class="mono">{pending}</span>' in running


async def test_escalated_ticket_shows_decision_and_reasons(client: Any, seeded: SeededTraces) -> None:
    text = (await client.get(f"/traces/{seeded.escalated}")).text
    assert '<span class="badge escalate">escalate</span>' in text
    assert "demands a refund: the agent never promises money" in text
    assert "legal threat" in text
    assert "re-queued for another cycle" in text


async def test_ticket_and_model_text_is_escaped(client: Any, seeded: SeededTraces) -> None:
    text = (await client.get(f"/traces/{seeded.hostile}")).text
    assert esc(HOSTILE_BODY) in text
    assert "<script" not in text.lower()
    assert "<img" not in text.lower()
    assert "<b>urgent</b>" not in text
    assert "<b>odd</b>" not in text
    assert "<i>0.70" not in text
    assert 'href="javascript:' not in text
    assert not re.search(r'(href|src)="https?://', text), "no remote link or image in the page"


async def test_every_page_carries_the_security_headers(client: Any, seeded: SeededTraces) -> None:
    for path in (
        "/",
        "/console",
        "/console/tickets",
        "/console/review",
        f"/traces/{seeded.resolved}",
        f"/traces/{uuid4()}",
        "/login",
        "/static/console.css",
    ):
        response = await client.get(path)
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
    css = await client.get("/static/console.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert (await client.get("/static/../settings.py")).status_code == 404


async def test_unknown_ticket_is_a_404_page(client: Any, clean_db: asyncpg.Pool) -> None:
    response = await client.get(f"/traces/{uuid4()}")
    assert response.status_code == 404
    assert "does not exist" in response.text
    assert (await client.get("/traces/not-a-uuid")).status_code == 404


async def test_console_counts_lists_and_filters(client: Any, seeded: SeededTraces) -> None:
    home = await client.get("/")
    assert home.status_code == 200
    assert home.text == (await client.get("/console")).text or "Overview" in home.text
    assert re.search(r'href="/console/tickets\?status=resolved">resolved</a>\s*<b>2</b>', home.text)
    assert f'href="/traces/{seeded.resolved}"' in home.text
    resolved = (await client.get("/console/tickets", params={"status": "resolved"})).text
    assert f'href="/traces/{seeded.resolved}"' in resolved
    assert f'href="/traces/{seeded.hostile}"' in resolved
    assert f'href="/traces/{seeded.queued}"' not in resolved
    first = (await client.get("/console/tickets", params={"limit": 2})).text
    assert first.count('class="subject" href="/traces/') == 5
    bad = await client.get("/console/tickets", params={"status": "lost"})
    assert bad.status_code == 422
    assert "status must be one of" in bad.text
    bad_cursor = await client.get("/console/tickets", params={"cursor": "garbage!"})
    assert bad_cursor.status_code == 422


async def test_ticket_list_pages_with_the_api_cursor(client: Any, clean_db: asyncpg.Pool) -> None:
    customer = await clean_db.fetchval("INSERT INTO customers (email) VALUES ('many@example.com') RETURNING id")
    await clean_db.execute(
        """INSERT INTO tickets (external_id, customer_id, channel, subject, body, raw_payload, created_at)
           SELECT 'bulk-' || i, $1, 'in_app', 'bulk subject ' || i, 'body', '{}'::jsonb,
                  now() - make_interval(secs => i)
           FROM generate_series(1, 55) AS i""",
        customer,
    )
    first = (await client.get("/console/tickets")).text
    assert first.count('class="subject"') == 50
    next_url = re.search(r'<a href="([^"]+)" rel="next">', first)
    assert next_url
    second = (await client.get(html.unescape(next_url.group(1)))).text
    assert second.count('class="subject"') == 5
    assert "bulk subject 55" in second
    assert 'rel="next"' not in second


async def test_review_queue_is_oldest_first(client: Any, seeded: SeededTraces) -> None:
    text = (await client.get("/console/review")).text
    escalated = text.index(f'href="/traces/{seeded.escalated}"')
    hostile = text.index(f'href="/traces/{seeded.hostile}"')
    assert escalated < hostile  # the escalated ticket is older
    assert f'href="/traces/{seeded.resolved}"' not in text


async def test_open_console_says_so(client: Any, seeded: SeededTraces) -> None:
    text = (await client.get("/console")).text
    assert "No admin token is configured" in text
    assert "Log out" not in text
    client.follow_redirects = False
    login = await client.get("/login", params={"next": "/console/review"})
    assert login.status_code == 303
    assert login.headers["location"] == "/console/review"


async def test_pages_stay_out_of_the_openapi_schema(client: Any) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    assert "/api/tickets/{ticket_id}/trace" in paths
    pages = {"/", "/console", "/console/tickets", "/console/review", "/traces/{ticket_id}", "/login", "/logout"}
    assert not pages & set(paths)
    assert not [p for p in paths if p.startswith(("/static", "/console", "/traces"))]


async def test_admin_token_login_cookie_and_logout(make_client: Callable[..., Any], clean_db: asyncpg.Pool) -> None:
    seeded = await seed_traces(clean_db)
    async with make_client(DESKPILOT_ADMIN_TOKEN=TOKEN) as client:
        client.follow_redirects = False
        page = f"/traces/{seeded.resolved}"
        anonymous = await client.get(page)
        assert anonymous.status_code == 303
        assert anonymous.headers["location"] == f"/login?next={page}"
        assert anonymous.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        for path in ("/", "/console/tickets", "/console/review"):
            assert (await client.get(path)).status_code == 303
        assert (await client.get(f"/api/tickets/{seeded.resolved}/trace")).status_code == 401

        form = await client.get("/login", params={"next": page})
        assert form.status_code == 200
        assert "No admin token is configured" not in form.text
        csrf = csrf_from(form.text)
        no_csrf = await client.post("/login", data={"token": TOKEN, "next": page})
        assert no_csrf.status_code == 403
        wrong = await client.post("/login", data={"token": "guess", "next": page, "csrf_token": csrf})
        assert wrong.status_code == 401
        assert "not valid" in wrong.text
        assert "deskpilot_admin" not in wrong.headers.get("set-cookie", "")

        ok = await client.post("/login", data={"token": TOKEN, "next": page, "csrf_token": csrf})
        assert ok.status_code == 303
        assert ok.headers["location"] == page
        assert TOKEN not in ok.headers["location"]
        assert TOKEN not in ok.headers["set-cookie"]  # a signed session, not the token
        cookie = ok.headers["set-cookie"].lower()
        assert "deskpilot_admin=" in cookie
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        signed_in = await client.get(page)
        assert signed_in.status_code == 200
        assert "Log out" in signed_in.text
        # The JSON behind the page opens with the same cookie.
        assert (await client.get(f"/api/tickets/{seeded.resolved}/trace")).status_code == 200

        logout = await client.post("/logout", data={"csrf_token": csrf_from(signed_in.text)})
        assert logout.status_code == 303
        assert logout.headers["location"] == "/login"
        client.cookies.delete("deskpilot_admin")  # what the browser does with the expired cookie
        assert (await client.get(page)).status_code == 303

        bearer = await client.get(page, headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200


async def test_login_never_redirects_off_site(make_client: Callable[..., Any], clean_db: asyncpg.Pool) -> None:
    async with make_client(DESKPILOT_ADMIN_TOKEN=TOKEN) as client:
        client.follow_redirects = False
        for target in ("//evil.example/x", "https://evil.example", "/\\evil.example", "javascript:alert(1)"):
            form = await client.get("/login", params={"next": target})
            assert 'name="next" value="/"' in form.text
            done = await client.post(
                "/login", data={"token": TOKEN, "next": target, "csrf_token": csrf_from(form.text)}
            )
            assert done.headers["location"] == "/"
            signed_in = await client.get("/login", params={"next": target})
            assert signed_in.status_code == 303
            assert signed_in.headers["location"] == "/"
            client.cookies.delete("deskpilot_admin")


async def test_review_form_needs_csrf(client: Any, seeded: SeededTraces, clean_db: asyncpg.Pool) -> None:
    response = await client.post(f"/console/tickets/{seeded.escalated}/review", data={"action": "reject"})
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert await clean_db.fetchval("SELECT count(*) FROM reviews") == 0


async def test_reject_from_the_trace_page(client: Any, seeded: SeededTraces, clean_db: asyncpg.Pool) -> None:
    page = await client.get(f"/traces/{seeded.escalated}")
    assert 'action="/console/tickets/' in page.text
    client.follow_redirects = False
    done = await client.post(
        f"/console/tickets/{seeded.escalated}/review",
        data={
            "action": "reject",
            "reason": "should_escalate",
            "text": "ignored",
            "note": "customer called",
            "csrf_token": csrf_from(page.text),
        },
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/traces/{seeded.escalated}?reviewed=reject"
    review = await clean_db.fetchrow("SELECT action, note, reviewer, sent_text FROM reviews")
    assert dict(review) == {
        "action": "reject",
        "note": "customer called",
        "reviewer": "console",
        "sent_text": None,
    }
    assert await clean_db.fetchval("SELECT needs_review FROM tickets WHERE id = $1", seeded.escalated) is False
    after = (await client.get(done.headers["location"])).text
    assert "Review recorded: reject." in after
    assert 'id="review"' not in after  # nothing left to review
    assert '<span class="badge reject">reject</span>' in after
    assert "customer called" in after
    again = await client.post(
        f"/console/tickets/{seeded.escalated}/review",
        data={"action": "reject", "reason": "should_escalate", "csrf_token": csrf_from(page.text)},
    )
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("text/html")
    unknown = await client.post(f"/console/tickets/{seeded.escalated}/review", data={"action": "x"})
    assert unknown.status_code == 403  # the CSRF check comes first


async def test_approve_from_the_trace_page_sends_the_draft(
    client: Any, seeded: SeededTraces, clean_db: asyncpg.Pool
) -> None:
    page = await client.get(f"/traces/{seeded.hostile}")
    client.follow_redirects = False
    # The form always posts its textarea; for an approval the draft goes out, not the text box.
    done = await client.post(
        f"/console/tickets/{seeded.hostile}/review",
        data={"action": "approve", "text": "something else", "csrf_token": csrf_from(page.text)},
    )
    assert done.status_code == 303, done.text
    sent = await clean_db.fetchval("SELECT sent_text FROM reviews WHERE ticket_id = $1", seeded.hostile)
    assert sent.startswith("Try again.")
    delivery = await clean_db.fetchrow("SELECT origin, body FROM deliveries WHERE ticket_id = $1", seeded.hostile)
    assert delivery["origin"] == "reviewer"
    assert delivery["body"] == sent


async def test_odd_node_outputs_still_render(client: Any, seeded: SeededTraces, clean_db: asyncpg.Pool) -> None:
    """Outputs that do not follow the documented keys (an older agent, a failed node) are shown, not a 500."""
    attempt_id = await clean_db.fetchval(
        """INSERT INTO resolution_attempts (ticket_id, attempt_no, state, error, citations, confidence)
           VALUES ($1, 2, 'failed', 'model timed out', '"not-a-list"'::jsonb, 0.5) RETURNING id""",
        seeded.resolved,
    )
    odd = [
        ("classify", ["a", "list"], None),
        ("retrieve", {"items": "nothing"}, None),
        ("draft", {"citations": "res-101", "draft": None}, "LLM timeout after 30 s"),
        ("score", {"confidence": "high", "breakdown": {"x": 3}, "thresholds": "n/a"}, None),
        ("mystery_node", {"anything": {"nested": [1, 2]}}, None),
        ("escalate", {}, None),
    ]
    for seq, (node, output, error) in enumerate(odd, start=1):
        await clean_db.execute(
            """INSERT INTO attempt_steps (attempt_id, seq, node, started_at, duration_ms, output, error)
               VALUES ($1, $2, $3, now(), $4, $5, $6)""",
            attempt_id,
            seq,
            node,
            float(seq),
            output,
            error,
        )
    page = await client.get(f"/traces/{seeded.resolved}")
    assert page.status_code == 200, page.text
    assert "Attempt 2" in page.text
    assert "model timed out" in page.text
    assert "LLM timeout after 30 s" in page.text
    assert "<code>mystery_node</code>" in page.text
    assert "nested" in page.text
