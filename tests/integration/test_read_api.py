"""The read API, customers and health through the real app and a real database."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest


async def test_health_reports_database_ok(client: Any) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["database"]["ok"] is True
    assert body["llm"]["enabled"] is False


async def test_metrics_are_prometheus_text(client: Any) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert "deskpilot_tickets_ingested_total" in response.text
    assert 'deskpilot_tickets{status="open"}' in response.text


async def test_customer_upsert_then_event(client: Any, clean_db: asyncpg.Pool) -> None:
    created = await client.post("/api/customers", json={"email": "Ada@Example.COM", "name": "Ada", "tier": "pro"})
    assert created.status_code == 201, created.text
    customer = created.json()
    assert customer["email"] == "ada@example.com"
    again = await client.post("/api/customers", json={"email": "ada@example.com", "tier": "enterprise"})
    assert again.status_code == 200
    assert again.json()["id"] == customer["id"]
    assert again.json()["tier"] == "enterprise"
    assert again.json()["name"] == "Ada"
    event = await client.post(
        f"/api/customers/{customer['id']}/events", json={"kind": "payment_failed", "data": {"amount": 49}}
    )
    assert event.status_code == 201, event.text
    assert await clean_db.fetchval("SELECT count(*) FROM customer_events") == 1


async def test_customer_validation_names_the_field(client: Any) -> None:
    bad_email = await client.post("/api/customers", json={"email": "not-an-address"})
    assert bad_email.status_code == 422
    assert bad_email.headers["content-type"].startswith("application/problem+json")
    assert bad_email.json()["field"] == "email"
    bad_tier = await client.post("/api/customers", json={"email": "a@b.co", "tier": "x" * 65})
    assert bad_tier.status_code == 422
    assert "tier" in bad_tier.json()["detail"]
    missing = await client.post("/api/customers/00000000-0000-0000-0000-000000000000/events", json={"kind": "x"})
    assert missing.status_code == 404


async def test_ticket_list_filters_and_paginates(client: Any, clean_db: asyncpg.Pool) -> None:
    customer_id = await clean_db.fetchval("INSERT INTO customers (email) VALUES ('p@example.com') RETURNING id")
    for i in range(5):
        await clean_db.execute(
            """INSERT INTO tickets (external_id, customer_id, channel, subject, body, raw_payload, status,
                                    created_at)
               VALUES ($1, $2, 'email', $3, 'body', '{}'::jsonb, $4, now() - make_interval(secs => $5))""",
            f"ext-{i}",
            customer_id,
            f"subject {i}",
            "open" if i % 2 == 0 else "resolved",
            float(i),
        )
    first = await client.get("/api/tickets", params={"limit": 2})
    assert first.status_code == 200
    page = first.json()
    assert [t["subject"] for t in page["items"]] == ["subject 0", "subject 1"]
    second = await client.get("/api/tickets", params={"limit": 2, "cursor": page["next_cursor"]})
    assert [t["subject"] for t in second.json()["items"]] == ["subject 2", "subject 3"]
    third = await client.get("/api/tickets", params={"limit": 2, "cursor": second.json()["next_cursor"]})
    assert [t["subject"] for t in third.json()["items"]] == ["subject 4"]
    assert third.json()["next_cursor"] is None
    resolved = await client.get("/api/tickets", params={"status": "resolved"})
    assert {t["subject"] for t in resolved.json()["items"]} == {"subject 1", "subject 3"}
    bad = await client.get("/api/tickets", params={"status": "lost"})
    assert bad.status_code in (400, 422)
    bad_cursor = await client.get("/api/tickets", params={"cursor": "garbage!"})
    assert bad_cursor.status_code == 422
    assert bad_cursor.json()["field"] == "cursor"


async def test_unknown_ticket_is_404_problem(client: Any) -> None:
    response = await client.get("/api/tickets/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_admin_token_required_when_set(make_client: Any) -> None:
    async with make_client(DESKPILOT_ADMIN_TOKEN="s3cret-admin-token-0123456789") as c:
        assert (await c.get("/api/tickets")).status_code == 401
        wrong = await c.get("/api/tickets", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await c.get("/api/tickets", headers={"Authorization": "Bearer s3cret-admin-token-0123456789"})
        assert ok.status_code == 200
        assert (await c.get("/health")).status_code == 200


class _CommitsAfterFirstRead:
    """A connection that lets another session commit right after the reader's first query, the moment a
    non-snapshot reader would go on to see half of that commit."""

    def __init__(self, conn: asyncpg.Connection, commit: Any) -> None:
        self._conn = conn
        self._commit = commit
        self._committed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def fetchrow(self, *args: Any) -> Any:
        row = await self._conn.fetchrow(*args)
        if not self._committed:
            self._committed = True
            await self._commit()
        return row


@pytest.mark.parametrize("reader", ["detail", "trace"])
async def test_a_reader_never_sees_half_of_a_concurrent_decision(clean_db: asyncpg.Pool, reader: str) -> None:
    from tickets.reads import get_ticket_detail
    from tickets.trace import get_trace

    customer_id = await clean_db.fetchval("INSERT INTO customers (email) VALUES ('s@example.com') RETURNING id")
    ticket_id = await clean_db.fetchval(
        """INSERT INTO tickets (external_id, customer_id, channel, subject, body, raw_payload, status)
           VALUES ('snap-1', $1, 'email', 'subject', 'body', '{}'::jsonb, 'in_progress') RETURNING id""",
        customer_id,
    )
    await clean_db.execute("INSERT INTO resolution_attempts (ticket_id, attempt_no) VALUES ($1, 1)", ticket_id)

    async def decide() -> None:
        async with clean_db.acquire() as writer, writer.transaction():
            await writer.execute("UPDATE tickets SET status = 'resolved' WHERE id = $1", ticket_id)
            await writer.execute(
                "UPDATE resolution_attempts SET decision = 'deliver', state = 'completed' WHERE ticket_id = $1",
                ticket_id,
            )

    async with clean_db.acquire() as conn:
        proxy: Any = _CommitsAfterFirstRead(conn, decide)
        if reader == "detail":
            seen = await get_ticket_detail(proxy, ticket_id)
            status, attempts = seen["status"], seen["attempts"]
        else:
            seen = await get_trace(proxy, ticket_id)
            status, attempts = seen["ticket"]["status"], seen["attempts"]
    assert proxy._committed
    assert (status, attempts[0]["decision"]) == ("in_progress", None)
    assert await clean_db.fetchval("SELECT status FROM tickets WHERE id = $1", ticket_id) == "resolved"
