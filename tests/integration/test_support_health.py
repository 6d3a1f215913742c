"""Support-health figures (API and per-tier gauges), closing quiet tickets on a controlled clock, the in-app
inbox.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from core.settings import Settings
from delivery import outbox
from tests.support.delivery import seed_agent_reply, seed_attempt, seed_customer, seed_ticket
from tickets.auto_close import QUIET_PERIOD_REASON, close_quiet_tickets

DAY = 86400.0


async def test_support_health_of_a_customer(client: Any, clean_db: asyncpg.Pool) -> None:
    email = "acme@example.com"
    await seed_ticket(clean_db, email=email, tier="enterprise", status="open", confidence=None)
    await seed_ticket(clean_db, email=email, tier="enterprise", status="in_progress", confidence=0.5)
    await seed_ticket(
        clean_db, email=email, tier="enterprise", status="pending_customer", needs_review=True, confidence=0.3
    )
    resolved = await seed_ticket(clean_db, email=email, tier="enterprise", status="resolved", confidence=0.9)
    old = await seed_ticket(
        clean_db, email=email, tier="enterprise", status="closed", confidence=1.0, created_offset_s=40 * DAY
    )
    await clean_db.execute("UPDATE tickets SET reopen_count = 2 WHERE id = $1", old)
    attempt = await seed_attempt(clean_db, resolved, decision="deliver")
    failed = await seed_agent_reply(clean_db, resolved, attempt, status="failed")
    assert failed
    await seed_ticket(clean_db, email="someone-else@example.com", tier="free", status="open")
    customer_id = await clean_db.fetchval("SELECT id FROM customers WHERE email = $1", email)
    last_contact = await clean_db.fetchval(
        "SELECT max(last_customer_message_at) FROM tickets WHERE customer_id = $1", customer_id
    )

    response = await client.get(f"/api/customers/{customer_id}/support-health")
    assert response.status_code == 200, response.text
    health = response.json()
    assert health["customer_id"] == str(customer_id)
    assert health["tier"] == "enterprise"
    assert health["total_tickets"] == 5
    assert health["open_tickets"] == 4  # everything not closed
    assert health["unresolved_tickets"] == 3  # open, in progress, waiting on the customer
    assert health["escalated_tickets"] == 1
    assert health["tickets_30d"] == 4
    assert health["mean_confidence"] == pytest.approx((0.5 + 0.3 + 0.9 + 1.0) / 4)
    assert health["reopen_count"] == 2
    assert health["failed_deliveries"] == 1
    assert datetime.fromisoformat(health["last_contact_at"]) == last_contact

    empty = await seed_customer(clean_db, "new@example.com", "trial")
    blank = (await client.get(f"/api/customers/{empty}/support-health")).json()
    assert blank["total_tickets"] == 0
    assert blank["open_tickets"] == 0
    assert blank["mean_confidence"] is None
    assert blank["last_contact_at"] is None
    assert (await client.get(f"/api/customers/{UUID(int=0)}/support-health")).status_code == 404


async def test_support_health_export_pages_through_every_customer(
    client: Any, clean_db: asyncpg.Pool, make_client: Callable[..., Any]
) -> None:
    await seed_ticket(clean_db, email="a@example.com", tier="pro", status="open", confidence=0.4)
    await seed_ticket(clean_db, email="a@example.com", tier="pro", status="pending_customer", needs_review=True)
    await seed_ticket(clean_db, email="b@example.com", tier="free", status="closed")
    for i in range(3):
        await seed_customer(clean_db, f"quiet{i}@example.com", "trial")
    await clean_db.execute("INSERT INTO customers (email) VALUES ('no-plan@example.com')")
    ids = [r["id"] for r in await clean_db.fetch("SELECT id FROM customers ORDER BY created_at, id")]
    assert len(ids) == 6

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/customers/support-health", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # A customer created while the export is being read lands on a later page, not one already read.
        if pages == 1:
            ids.append(await seed_customer(clean_db, "late@example.com", "pro"))
    assert pages == 2
    assert [item["customer_id"] for item in seen] == [str(i) for i in ids]  # each once, oldest first
    # Each item is what the per-customer endpoint says about that customer.
    for item in seen:
        single = (await client.get(f"/api/customers/{item['customer_id']}/support-health")).json()
        assert item == single
    # The per-tier gauges add up to the export's figures: one query means the same thing in both.
    metrics = (await client.get("/metrics")).text
    for tier, label in [("pro", "pro"), ("free", "free"), ("trial", "trial"), (None, "none")]:
        for figure, gauge in [("open_tickets", "open_tickets"), ("escalated_tickets", "escalated_tickets")]:
            total = sum(item[figure] for item in seen if item["tier"] == tier)
            assert f'deskpilot_support_{gauge}{{tier="{label}"}} {float(total)}' in metrics
    by_email = {item["email"]: item for item in seen}
    assert by_email["a@example.com"]["open_tickets"] == 2 and by_email["a@example.com"]["escalated_tickets"] == 1
    assert by_email["no-plan@example.com"]["tier"] is None and by_email["no-plan@example.com"]["total_tickets"] == 0

    for query, field in [("limit=0", "limit"), ("limit=1001", "limit"), ("cursor=not-a-cursor", "cursor")]:
        bad = await client.get(f"/api/customers/support-health?{query}")
        assert bad.status_code in (400, 422), bad.text
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert bad.json()["field"] == field
    async with make_client(DESKPILOT_ADMIN_TOKEN="support-health-export-token-0123456789") as guarded:
        assert (await guarded.get("/api/customers/support-health")).status_code == 401


async def test_support_health_gauges_by_tier(client: Any, clean_db: asyncpg.Pool) -> None:
    await seed_ticket(clean_db, email="p1@example.com", tier="pro", status="open", confidence=0.4)
    await seed_ticket(clean_db, email="p2@example.com", tier="pro", status="pending_customer", confidence=0.6)
    await seed_ticket(clean_db, email="f1@example.com", tier="free", status="closed")
    # The operator's own plan names, and a customer with none (as one an inbound ticket creates).
    await clean_db.execute("INSERT INTO customers (email, tier) VALUES ('s1@example.com', 'Scale plan')")
    await clean_db.execute("INSERT INTO customers (email) VALUES ('anon@example.com')")
    text = (await client.get("/metrics")).text
    assert 'deskpilot_support_open_tickets{tier="pro"} 2.0' in text
    assert 'deskpilot_support_unresolved_tickets{tier="pro"} 2.0' in text
    assert 'deskpilot_support_escalated_tickets{tier="pro"} 1.0' in text
    assert 'deskpilot_support_open_tickets{tier="free"} 0.0' in text
    assert 'deskpilot_support_open_tickets{tier="Scale plan"} 0.0' in text
    assert 'deskpilot_support_mean_confidence{tier="Scale plan"} NaN' in text
    assert 'deskpilot_support_open_tickets{tier="none"} 0.0' in text
    assert 'deskpilot_support_mean_confidence{tier="pro"} 0.5' in text
    assert 'deskpilot_support_tickets_30d{tier="free"} 1.0' in text
    # Series per plan the customers actually have: no fixed list of plan names.
    assert 'tier="enterprise"' not in text
    assert "deskpilot_support_failed_deliveries" in text
    assert "deskpilot_support_reopens" in text
    assert 'deskpilot_support_last_contact_timestamp_seconds{tier="pro"}' in text


async def test_a_plan_no_customer_has_any_more_leaves_the_gauges(clean_db: asyncpg.Pool) -> None:
    from core.metrics import Metrics
    from tickets.support_health import refresh_support_health_gauges

    metrics = Metrics()
    await clean_db.execute("INSERT INTO customers (email, tier) VALUES ('s1@example.com', 'Scale plan')")
    async with clean_db.acquire() as conn:
        await refresh_support_health_gauges(conn, metrics)
        assert 'deskpilot_support_open_tickets{tier="Scale plan"} 0.0' in metrics.render().decode()
        await conn.execute("UPDATE customers SET tier = 'Scale' WHERE tier = 'Scale plan'")
        await refresh_support_health_gauges(conn, metrics)
    text = metrics.render().decode()
    assert 'deskpilot_support_open_tickets{tier="Scale"} 0.0' in text
    assert 'tier="Scale plan"' not in text


# --- closing quiet tickets --------------------------------------------------------------------------------


async def test_resolved_tickets_close_after_the_quiet_period(
    clean_db: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(DESKPILOT_CLOSE_AFTER=str(3 * DAY))
    quiet = await seed_ticket(clean_db, email="q@example.com", status="resolved")
    reviewing = await seed_ticket(clean_db, email="r@example.com", status="resolved", needs_review=True)
    unsent = await seed_ticket(clean_db, email="u@example.com", status="resolved")
    await seed_agent_reply(clean_db, unsent, await seed_attempt(clean_db, unsent, decision="deliver"))
    waiting = await seed_ticket(clean_db, email="w@example.com", status="pending_customer")
    chatty = await seed_ticket(clean_db, email="c@example.com", status="resolved")
    now = datetime.now(UTC)

    async with clean_db.acquire() as conn:
        assert await close_quiet_tickets(conn, settings, now=now + timedelta(days=2)) == 0
        # The customer of `chatty` wrote again two days in: its quiet period starts over.
        await conn.execute(
            "UPDATE tickets SET last_customer_message_at = $2 WHERE id = $1", chatty, now + timedelta(days=2)
        )
        assert await close_quiet_tickets(conn, settings, now=now + timedelta(days=3, minutes=1)) == 1
        assert await close_quiet_tickets(conn, settings, now=now + timedelta(days=3, minutes=2)) == 0
        assert await close_quiet_tickets(conn, settings, now=now + timedelta(days=5, minutes=1)) == 1

    statuses = {r["id"]: r["status"] for r in await clean_db.fetch("SELECT id, status FROM tickets")}
    assert statuses[quiet] == "closed"
    assert statuses[chatty] == "closed"
    assert statuses[reviewing] == "resolved"
    assert statuses[unsent] == "resolved"
    assert statuses[waiting] == "pending_customer"
    history = await clean_db.fetchrow(
        """SELECT from_status, to_status, reason FROM ticket_status_history
           WHERE ticket_id = $1 ORDER BY id DESC""",
        quiet,
    )
    assert (history["from_status"], history["to_status"], history["reason"]) == (
        "resolved",
        "closed",
        QUIET_PERIOD_REASON,
    )
    assert await clean_db.fetchval("SELECT closed_at FROM tickets WHERE id = $1", quiet) is not None


async def test_quiet_period_counts_from_the_last_reply_sent(
    clean_db: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(DESKPILOT_CLOSE_AFTER=str(DAY))
    ticket_id = await seed_ticket(clean_db, status="resolved")
    delivery = await seed_agent_reply(clean_db, ticket_id, await seed_attempt(clean_db, ticket_id), status="sent")
    now = datetime.now(UTC)
    await clean_db.execute("UPDATE deliveries SET sent_at = $2 WHERE id = $1", delivery, now + timedelta(hours=12))
    async with clean_db.acquire() as conn:
        assert await close_quiet_tickets(conn, settings, now=now + timedelta(hours=25)) == 0
        assert await close_quiet_tickets(conn, settings, now=now + timedelta(hours=37)) == 1


async def test_follow_up_reopens_and_keeps_the_ticket_open(
    client: Any, clean_db: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    """A customer reply re-opens a resolved ticket (ingest), so the quiet-period close leaves it alone."""
    first = await client.post(
        "/api/webhooks/support/ingest",
        json={
            "external_id": "t-1",
            "channel": "email",
            "customer_email": "f@example.com",
            "subject": "Export fails",
            "body": "The CSV export fails with an error.",
        },
    )
    assert first.status_code == 201, first.text
    ticket_id = UUID(first.json()["ticket_id"])
    # As if the agent had answered it.
    await clean_db.execute(
        "UPDATE tickets SET status = 'resolved', resolved_at = now(), next_attempt_at = NULL WHERE id = $1",
        ticket_id,
    )
    follow_up = await client.post(
        "/api/webhooks/support/ingest",
        json={
            "external_id": "t-2",
            "channel": "email",
            "customer_email": "f@example.com",
            "subject": "Re: Export fails",
            "body": "It still fails today.",
            "thread_ref": "t-1",
        },
    )
    assert follow_up.status_code in (200, 201), follow_up.text
    ticket = await clean_db.fetchrow("SELECT status, reopen_count FROM tickets WHERE id = $1", ticket_id)
    assert ticket["status"] == "open"
    assert ticket["reopen_count"] == 1
    settings = make_settings(DESKPILOT_CLOSE_AFTER="0")
    async with clean_db.acquire() as conn:
        assert await close_quiet_tickets(conn, settings, now=datetime.now(UTC) + timedelta(days=30)) == 0


# --- the in-app inbox -------------------------------------------------------------------------------------


async def test_in_app_messages_visible_once_sent_then_read(
    client: Any, clean_db: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    email = "app-user@example.com"
    first = await seed_ticket(clean_db, channel="in_app", email=email, subject="Where is the export button?")
    second = await seed_ticket(clean_db, channel="in_app", email=email, subject="Dark mode?")
    replies = []
    for ticket_id, text in ((first, "Settings → Export."), (second, "Dark mode is on the roadmap.")):
        attempt = await seed_attempt(clean_db, ticket_id, draft=text, decision="deliver")
        replies.append(await seed_agent_reply(clean_db, ticket_id, attempt))
    other = await seed_ticket(clean_db, channel="in_app", email="other@example.com")
    await seed_agent_reply(clean_db, other, await seed_attempt(clean_db, other, decision="deliver"))
    customer_id = await clean_db.fetchval("SELECT id FROM customers WHERE email = $1", email)
    url = f"/api/customers/{customer_id}/messages"

    before = (await client.get(url)).json()
    assert before["items"] == []
    assert before["unread_count"] == 0

    assert await outbox.drain_outbox(clean_db, make_settings(), None, "w-1") == 3
    statuses = await clean_db.fetch("SELECT status FROM deliveries WHERE id = ANY($1::uuid[])", replies)
    assert {r["status"] for r in statuses} == {"sent"}
    await clean_db.execute(
        "UPDATE ticket_messages SET created_at = now() - interval '1 hour'"
        " WHERE ticket_id = $1 AND direction = 'outbound'",
        first,
    )

    listed = (await client.get(url)).json()
    assert [m["body"] for m in listed["items"]] == ["Dark mode is on the roadmap.", "Settings → Export."]
    assert all(m["unread"] for m in listed["items"])
    assert listed["unread_count"] == 2
    page = (await client.get(url, params={"limit": 1})).json()
    assert len(page["items"]) == 1
    assert page["next_cursor"]
    rest = (await client.get(url, params={"limit": 1, "cursor": page["next_cursor"]})).json()
    assert [m["body"] for m in rest["items"]] == ["Settings → Export."]
    assert rest["next_cursor"] is None

    newest_id = listed["items"][0]["id"]
    other_message = await clean_db.fetchval(
        "SELECT id FROM ticket_messages WHERE ticket_id = $1 AND direction = 'outbound'", other
    )
    marked = await client.post(f"{url}/read", json={"message_ids": [newest_id, str(other_message)]})
    assert marked.status_code == 200, marked.text
    assert marked.json() == {"marked": 1, "unread_count": 1}  # another customer's message is not touched
    assert await clean_db.fetchval("SELECT read_at FROM ticket_messages WHERE id = $1", other_message) is None
    unread = (await client.get(url, params={"unread": "true"})).json()
    assert [m["body"] for m in unread["items"]] == ["Settings → Export."]

    assert (await client.post(f"{url}/read", json={"all": True})).json() == {"marked": 1, "unread_count": 0}
    assert (await client.get(url, params={"unread": "true"})).json()["items"] == []

    bad = await client.post(f"{url}/read", json={})
    assert bad.status_code == 422
    assert bad.json()["field"] == "message_ids"
    both = await client.post(f"{url}/read", json={"all": True, "message_ids": [newest_id]})
    assert both.status_code == 422
    assert (await client.get(f"/api/customers/{UUID(int=0)}/messages")).status_code == 404


async def test_cancelled_in_app_reply_never_shows(
    client: Any, clean_db: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    ticket_id = await seed_ticket(clean_db, channel="in_app", status="resolved", needs_review=True, flagged=True)
    attempt = await seed_attempt(clean_db, ticket_id, draft="Wrong answer.", decision="flag_for_review")
    await seed_agent_reply(clean_db, ticket_id, attempt)
    edited = await client.post(f"/api/tickets/{ticket_id}/review", json={"action": "edit", "text": "Right answer."})
    assert edited.status_code == 200, edited.text
    assert await outbox.drain_outbox(clean_db, make_settings(), None, "w-1") == 1
    customer_id = await clean_db.fetchval("SELECT customer_id FROM tickets WHERE id = $1", ticket_id)
    items = (await client.get(f"/api/customers/{customer_id}/messages")).json()["items"]
    assert [(m["body"], m["author"]) for m in items] == [("Right answer.", "reviewer")]
