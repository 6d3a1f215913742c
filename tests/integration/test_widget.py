"""The in-app widget's public endpoints through the real app: configured origins only (CORS), the customer
identified by the operator's HMAC of their email, per-address rate limit, and never another customer's thread."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from app.controllers.widget import widget_signature

SECRET = "widget-secret-0123456789abcdef"
ORIGIN = "https://app.example.com"
WIDGET = {"DESKPILOT_WIDGET_SECRET": SECRET, "DESKPILOT_WIDGET_ORIGINS": f"{ORIGIN}, http://127.0.0.1:9999"}


def question(email: str = "ada@example.com", **changes: Any) -> dict[str, Any]:
    document = {
        "email": email,
        "signature": widget_signature(SECRET, email),
        "body": "How do I export my invoices as PDF?",
        "client_message_id": str(uuid.uuid4()),
        "name": "Ada",
    }
    document.update(changes)
    return document


def identity(email: str) -> dict[str, str]:
    return {"email": email, "signature": widget_signature(SECRET, email)}


@pytest.fixture
async def widget(make_client: Callable[..., Any]) -> AsyncIterator[Any]:
    async with make_client(**WIDGET) as client:
        yield client


async def add_reply(pool: asyncpg.Pool, ticket_id: str, body: str) -> None:
    await pool.execute(
        """INSERT INTO ticket_messages (ticket_id, direction, channel, author, subject, body)
           VALUES ($1::uuid, 'outbound', 'in_app', 'agent', 'Re', $2)""",
        ticket_id,
        body,
    )


async def test_script_is_served_to_other_origins(widget: Any) -> None:
    response = await widget.get("/widget.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert "/api/widget/messages" in response.text and "innerHTML" not in response.text


async def test_question_becomes_a_verified_in_app_ticket_and_a_retry_is_the_same_one(
    widget: Any, clean_db: asyncpg.Pool
) -> None:
    sent = question()
    first = await widget.post("/api/widget/messages", json=sent, headers={"origin": ORIGIN})
    assert first.status_code == 201, first.text
    assert first.headers["access-control-allow-origin"] == ORIGIN
    row = await clean_db.fetchrow(
        "SELECT t.channel, t.subject, t.metadata, c.email FROM tickets t JOIN customers c ON c.id = t.customer_id"
    )
    assert (row["channel"], row["email"]) == ("in_app", "ada@example.com")
    assert row["subject"] == "How do I export my invoices as PDF?"
    assert row["metadata"]["ingest"]["customer_verified"] is True
    assert row["metadata"]["widget"]["origin"] == ORIGIN
    again = await widget.post("/api/widget/messages", json=sent, headers={"origin": ORIGIN})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert await clean_db.fetchval("SELECT count(*) FROM tickets") == 1


async def test_preflight_allows_configured_origins_only(widget: Any) -> None:
    headers = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    allowed = await widget.options("/api/widget/messages", headers={"origin": ORIGIN, **headers})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "content-type" in allowed.headers["access-control-allow-headers"]
    refused = await widget.options("/api/widget/thread", headers={"origin": "https://evil.example", **headers})
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers


@pytest.mark.parametrize("origin", [None, "https://evil.example", "https://app.example.com.evil.example"])
async def test_other_origins_are_403_and_nothing_is_written(
    widget: Any, clean_db: asyncpg.Pool, origin: str | None
) -> None:
    headers = {"origin": origin} if origin else {}
    response = await widget.post("/api/widget/messages", json=question(), headers=headers)
    assert response.status_code == 403, response.text
    assert response.json()["field"] == "origin"
    assert await clean_db.fetchval("SELECT count(*) FROM tickets") == 0


async def test_a_wrong_signature_is_401_naming_the_field(widget: Any, clean_db: asyncpg.Pool) -> None:
    forged = question(email="bob@example.com", signature=widget_signature(SECRET, "ada@example.com"))
    response = await widget.post("/api/widget/messages", json=forged, headers={"origin": ORIGIN})
    assert response.status_code == 401
    assert response.json()["field"] == "signature"
    assert response.headers["access-control-allow-origin"] == ORIGIN  # the widget can show why
    thread = await widget.post(
        "/api/widget/thread",
        json={"email": "ada@example.com", "signature": "0" * 64},
        headers={"origin": ORIGIN},
    )
    assert thread.status_code == 401
    assert await clean_db.fetchval("SELECT count(*) FROM tickets") == 0


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"body": ""}, 422, "body"),
        ({"client_message_id": "not-a-uuid"}, 422, "client_message_id"),
        ({"status": "resolved"}, 422, None),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    widget: Any, clean_db: asyncpg.Pool, change: dict[str, Any], status: int, field: str | None
) -> None:
    response = await widget.post("/api/widget/messages", json=question(**change), headers={"origin": ORIGIN})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if field:
        assert response.json()["field"] == field
    assert await clean_db.fetchval("SELECT count(*) FROM tickets") == 0


async def test_the_thread_shows_only_the_signed_customers_messages(widget: Any, clean_db: asyncpg.Pool) -> None:
    ada = await widget.post("/api/widget/messages", json=question(), headers={"origin": ORIGIN})
    bob = await widget.post(
        "/api/widget/messages",
        json=question("bob@example.com", body="Bob's private question about his salary export"),
        headers={"origin": ORIGIN},
    )
    await add_reply(clean_db, ada.json()["ticket_id"], "Use Billing > Invoices > Download all.")
    await add_reply(clean_db, bob.json()["ticket_id"], "Bob's private answer")
    response = await widget.post("/api/widget/thread", json=identity("ada@example.com"), headers={"origin": ORIGIN})
    assert response.status_code == 200, response.text
    messages = response.json()["messages"]
    assert [(m["from"], m["body"]) for m in messages] == [
        ("you", "How do I export my invoices as PDF?"),
        ("support", "Use Billing > Invoices > Download all."),
    ]
    assert "Bob" not in response.text
    # The signature is the identity: Bob's email with Ada's signature reads nothing (and vice versa).
    borrowed = await widget.post(
        "/api/widget/thread",
        json={"email": "bob@example.com", "signature": widget_signature(SECRET, "ada@example.com")},
        headers={"origin": ORIGIN},
    )
    assert borrowed.status_code == 401


async def test_requests_are_rate_limited_per_client_address(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    async with make_client(**WIDGET, DESKPILOT_WIDGET_RATE_LIMIT="3") as client:
        answers = [
            (await client.post("/api/widget/thread", json=identity("ada@example.com"), headers={"origin": ORIGIN}))
            for _ in range(4)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert int(answers[-1].headers["retry-after"]) >= 1


async def test_without_configuration_the_widget_api_is_404(client: Any, clean_db: asyncpg.Pool) -> None:
    response = await client.post("/api/widget/messages", json=question(), headers={"origin": ORIGIN})
    assert response.status_code == 404
    assert "DESKPILOT_WIDGET_SECRET" in response.json()["detail"]
