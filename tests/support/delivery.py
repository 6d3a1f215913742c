"""Seeded tickets, attempts and queued replies for the delivery and review tests (plain SQL, no agent
package).
"""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg

from delivery.mail import reply_subject
from delivery.outbox import enqueue_reply, reply_idempotency_key


async def seed_customer(pool: asyncpg.Pool, email: str = "ada@example.com", tier: str = "pro") -> UUID:
    customer_id: UUID = await pool.fetchval(
        """INSERT INTO customers (email, name, tier) VALUES ($1, 'Ada', $2)
           ON CONFLICT (email) DO UPDATE SET tier = EXCLUDED.tier RETURNING id""",
        email,
        tier,
    )
    return customer_id


async def seed_ticket(
    pool: asyncpg.Pool,
    *,
    channel: str = "email",
    email: str = "ada@example.com",
    tier: str = "pro",
    subject: str = "Cannot log in",
    body: str = "I cannot log in to my account since this morning, the password reset mail never arrives.",
    status: str = "resolved",
    email_message_ids: tuple[str, ...] = (),
    metadata: dict[str, Any] | None = None,
    needs_review: bool = False,
    flagged: bool = False,
    confidence: float | None = None,
    category: str | None = "technical",
    priority: str | None = "normal",
    created_offset_s: float = 0.0,
) -> UUID:
    """A ticket and its inbound messages (`email_message_ids`: the customer's emails, oldest first)."""
    customer_id = await seed_customer(pool, email, tier)
    first_id = email_message_ids[0] if email_message_ids else None
    ticket_id: UUID = await pool.fetchval(
        """INSERT INTO tickets (external_id, customer_id, channel, subject, body, raw_payload, status,
                                metadata,
                                email_message_id, needs_review, flagged, confidence_score, category, priority,
                                resolved_at, created_at)
           VALUES ($1, $2, $3, $4, $5, '{}'::jsonb, $6, $7, $8, $9, $10, $11, $12, $13,
                   CASE WHEN $6 = 'resolved' THEN now() END, now() - make_interval(secs => $14))
           RETURNING id""",
        f"ext-{uuid.uuid4().hex[:12]}",
        customer_id,
        channel,
        subject,
        body,
        status,
        metadata or {},
        first_id,
        needs_review,
        flagged,
        confidence,
        category,
        priority,
        created_offset_s,
    )
    for n, message_id in enumerate(email_message_ids or (None,)):
        await pool.execute(
            """INSERT INTO ticket_messages (ticket_id, direction, channel, author, subject, body,
                                            email_message_id,
                                            created_at)
               VALUES ($1, 'inbound', $2, 'customer', $3, $4, $5, now() + make_interval(secs => $6))""",
            ticket_id,
            channel,
            subject,
            body if n == 0 else f"follow-up {n}",
            message_id,
            float(n),
        )
    return ticket_id


async def seed_attempt(
    pool: asyncpg.Pool,
    ticket_id: UUID,
    *,
    draft: str | None = "Please use the 'Forgot password' link and check your spam folder.",
    decision: str = "escalate",
    confidence: float = 0.42,
    category: str = "technical",
    priority: str = "normal",
    reasons: tuple[str, ...] = ("confidence below the review threshold",),
) -> UUID:
    attempt_no = await pool.fetchval(
        "SELECT COALESCE(max(attempt_no), 0) + 1 FROM resolution_attempts WHERE ticket_id = $1", ticket_id
    )
    attempt_id: UUID = await pool.fetchval(
        """INSERT INTO resolution_attempts (ticket_id, attempt_no, state, category, priority, draft,
                                            confidence,
                                            decision, decision_reasons, finished_at)
           VALUES ($1, $2, 'completed', $3, $4, $5, $6, $7, $8, now()) RETURNING id""",
        ticket_id,
        attempt_no,
        category,
        priority,
        draft,
        confidence,
        decision,
        list(reasons),
    )
    return attempt_id


async def seed_agent_reply(
    pool: asyncpg.Pool, ticket_id: UUID, attempt_id: UUID, *, body: str | None = None, status: str = "pending"
) -> UUID:
    """The agent's queued reply to an attempt, as the deliver node writes it (key = attempt id)."""
    async with pool.acquire() as conn, conn.transaction():
        ticket = await conn.fetchrow(
            """SELECT t.channel, t.subject, c.email FROM tickets t JOIN customers c ON c.id = t.customer_id
               WHERE t.id = $1""",
            ticket_id,
        )
        draft = body or await conn.fetchval("SELECT draft FROM resolution_attempts WHERE id = $1", attempt_id)
        _, delivery_id = await enqueue_reply(
            conn,
            ticket_id=ticket_id,
            channel=ticket["channel"],
            recipient=ticket["email"],
            subject=reply_subject(ticket["subject"]),
            body=draft,
            idempotency_key=reply_idempotency_key(ticket["channel"], str(attempt_id)),
            origin="agent",
            attempt_id=attempt_id,
        )
        if status != "pending":
            await conn.execute(
                """UPDATE deliveries SET status = $2, sent_at = CASE WHEN $2 = 'sent' THEN now() END
                   WHERE id = $1""",
                delivery_id,
                status,
            )
    return delivery_id


async def delivery_row(pool: asyncpg.Pool, delivery_id: UUID) -> dict[str, Any]:
    row = await pool.fetchrow("SELECT * FROM deliveries WHERE id = $1", delivery_id)
    assert row is not None
    return dict(row)
