"""Mass assignment beyond ingest (RELIABILITY.md, "Security"): no request body can set what the service decides —
ids, timestamps, a ticket's status, priority, confidence or assignee — through the admin API, the console form or
a follow-up message. Extra fields are refused (422 naming the field) or ignored, and never stored.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.support.trace_fixtures import seed_traces

FORGED_ID = "00000000-0000-4000-8000-000000000001"
FORGED_TIME = "2001-01-01T00:00:00+00:00"
# What the pipeline decides about a ticket, and values no legitimate request would produce.
DECIDED_BY_SERVICE = {
    "status": "closed",
    "priority": "urgent",
    "category": "general",
    "confidence_score": 1.0,
    "assigned_agent": "root",
    "resolution": "approved by request body",
    "flagged": False,
    "needs_review": False,
    "id": FORGED_ID,
    "customer_id": FORGED_ID,
    "created_at": FORGED_TIME,
}
TICKET_COLUMNS = (
    "id, customer_id, status, priority, category, confidence_score, assigned_agent, resolution, flagged, "
    "needs_review, created_at, updated_at"
)


def assert_refused(response: Any, *fields: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert any(name in response.text for name in fields), response.text


async def ticket_row(pool: asyncpg.Pool, ticket_id: UUID | str) -> dict[str, Any]:
    return dict(await pool.fetchrow(f"SELECT {TICKET_COLUMNS} FROM tickets WHERE id = $1::uuid", str(ticket_id)))


@pytest.mark.parametrize("extra", [{"id": FORGED_ID}, {"created_at": FORGED_TIME}, {"updated_at": FORGED_TIME}])
async def test_new_customer_cannot_choose_its_id_or_timestamps(
    client: Any, clean_db: asyncpg.Pool, extra: dict[str, str]
) -> None:
    response = await client.post("/api/customers", json={"email": "eve@example.com", "tier": "pro", **extra})
    assert_refused(response, *extra)
    assert await clean_db.fetchval("SELECT count(*) FROM customers") == 0


async def test_existing_customer_cannot_be_rewritten_through_extra_fields(client: Any, clean_db: asyncpg.Pool) -> None:
    created = await client.post("/api/customers", json={"email": "eve@example.com", "tier": "free"})
    assert created.status_code == 201, created.text
    before = dict(await clean_db.fetchrow("SELECT * FROM customers"))
    response = await client.post(
        "/api/customers",
        json={"email": "eve@example.com", "tier": "enterprise", "id": FORGED_ID, "created_at": FORGED_TIME},
    )
    assert_refused(response, "id", "created_at")
    assert dict(await clean_db.fetchrow("SELECT * FROM customers")) == before


async def test_customer_event_cannot_choose_its_id_or_customer(client: Any, clean_db: asyncpg.Pool) -> None:
    customer = (await client.post("/api/customers", json={"email": "eve@example.com"})).json()
    for extra in ({"id": FORGED_ID}, {"customer_id": FORGED_ID}, {"created_at": FORGED_TIME}):
        response = await client.post(
            f"/api/customers/{customer['id']}/events", json={"kind": "payment_failed", **extra}
        )
        assert_refused(response, *extra)
    assert await clean_db.fetchval("SELECT count(*) FROM customer_events") == 0


async def test_review_cannot_set_what_the_service_decides(client: Any, clean_db: asyncpg.Pool) -> None:
    traces = await seed_traces(clean_db)
    before = await ticket_row(clean_db, traces.escalated)
    for name, value in DECIDED_BY_SERVICE.items():
        response = await client.post(f"/api/tickets/{traces.escalated}/review", json={"action": "reject", name: value})
        assert_refused(response, name)
    assert await ticket_row(clean_db, traces.escalated) == before
    assert await clean_db.fetchval("SELECT count(*) FROM reviews") == 0


async def test_mark_read_cannot_set_other_fields(client: Any, clean_db: asyncpg.Pool) -> None:
    customer = (await client.post("/api/customers", json={"email": "eve@example.com"})).json()
    response = await client.post(
        f"/api/customers/{customer['id']}/messages/read",
        json={"all": True, "customer_id": FORGED_ID, "read_at": FORGED_TIME},
    )
    assert_refused(response, "customer_id", "read_at")


async def test_console_review_form_ignores_extra_fields(client: Any, clean_db: asyncpg.Pool) -> None:
    traces = await seed_traces(clean_db)
    before = await ticket_row(clean_db, traces.escalated)
    page = await client.get(f"/traces/{traces.escalated}")
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert csrf, "the trace page has no review form"
    forged = {name: str(value) for name, value in DECIDED_BY_SERVICE.items()}
    client.follow_redirects = False
    done = await client.post(
        f"/console/tickets/{traces.escalated}/review",
        data={"action": "reject", "reason": "tone", "csrf_token": csrf.group(1), **forged},
    )
    assert done.status_code == 303, done.text
    after = await ticket_row(clean_db, traces.escalated)
    # The rejection itself clears the review flag and may move the status; nothing else changes, and nothing
    # takes the forged value.
    for column in ("id", "customer_id", "priority", "category", "confidence_score", "assigned_agent", "created_at"):
        assert after[column] == before[column], column
    assert after["status"] != "closed" and after["resolution"] != forged["resolution"]
    assert await clean_db.fetchval("SELECT reviewer FROM reviews") == "console"


async def test_follow_up_cannot_set_its_parent_tickets_state(client: Any, clean_db: asyncpg.Pool) -> None:
    first = await client.post(
        "/api/webhooks/support/ingest",
        json={"external_id": "ma-parent", "customer_email": "ann@example.com", "body": "My export fails."},
    )
    assert first.status_code == 201, first.text
    ticket_id = first.json()["ticket_id"]
    before = await ticket_row(clean_db, ticket_id)
    followup = await client.post(
        "/api/webhooks/support/ingest",
        json={
            "external_id": "ma-reply",
            "customer_email": "ann@example.com",
            "thread_ref": "ma-parent",
            "body": "Any news?",
            "ticket_id": FORGED_ID,
            **DECIDED_BY_SERVICE,
        },
    )
    assert followup.status_code == 201, followup.text
    assert followup.json()["ticket_id"] == ticket_id
    after = await ticket_row(clean_db, ticket_id)
    assert {k: v for k, v in after.items() if k != "updated_at"} == {
        k: v for k, v in before.items() if k != "updated_at"
    }
    assert await clean_db.fetchval("SELECT count(*) FROM tickets") == 1
