"""Tickets for the agent graph run in this process: a queued ticket with its customer, claimed the way a worker
claims it, and a calibration that gives every grounded reply one confidence (to steer the decision branch)."""

from __future__ import annotations

import math
from typing import Any
from uuid import UUID

import asyncpg

from agent.scoring.confidence import INTENT_SIGNALS, SIMILARITY_SIGNALS, Calibration, CalibrationModel
from tickets.queue import Claim


def fixed_calibration(confidence: float) -> Calibration:
    """A calibration that ignores the evidence: every grounded reply gets `confidence` (branch tests)."""
    intercept = math.log(confidence / (1 - confidence))

    def model(names: tuple[str, ...]) -> CalibrationModel:
        return CalibrationModel(signals=names, coef=[0.0] * len(names), intercept=intercept, iso_x=[], iso_y=[])

    return Calibration(with_intents=model(INTENT_SIGNALS), without_intents=model(SIMILARITY_SIGNALS))


async def new_ticket(
    pool: asyncpg.Pool,
    *,
    subject: str,
    body: str,
    email: str = "ada@example.com",
    name: str | None = "Ada",
    tier: str = "pro",
    channel: str = "email",
    cycle_count: int = 0,
    metadata: dict[str, Any] | None = None,
) -> UUID:
    async with pool.acquire() as conn, conn.transaction():
        customer_id = await conn.fetchval(
            """INSERT INTO customers (email, name, tier) VALUES ($1, $2, $3)
               ON CONFLICT (email) DO UPDATE SET tier = EXCLUDED.tier RETURNING id""",
            email,
            name,
            tier,
        )
        ticket_id: UUID = await conn.fetchval(
            """INSERT INTO tickets (external_id, customer_id, channel, subject, body, customer_name, raw_payload,
                                    next_attempt_at, cycle_count, metadata)
               VALUES ('t-' || gen_random_uuid(), $1, $2, $3, $4, $5, '{}'::jsonb, now(), $6, $7) RETURNING id""",
            customer_id,
            channel,
            subject,
            body,
            name,
            cycle_count,
            metadata or {},
        )
        await conn.execute(
            """INSERT INTO ticket_messages (ticket_id, direction, channel, author, subject, body)
               VALUES ($1, 'inbound', $2, 'customer', $3, $4)""",
            ticket_id,
            channel,
            subject,
            body,
        )
        await conn.execute(
            """INSERT INTO ticket_status_history (ticket_id, from_status, to_status, reason)
               VALUES ($1, NULL, 'open', 'test')""",
            ticket_id,
        )
    return ticket_id


async def claim(pool: asyncpg.Pool, ticket_id: UUID) -> Claim:
    """Claim this ticket the way `claim_next_ticket` claims the next one."""
    row = await pool.fetchrow(
        """UPDATE tickets SET lease_owner = 'test-worker', lease_expires_at = now() + interval '60 seconds',
                  lease_token = nextval('lease_token_seq'), attempt_count = attempt_count + 1
           WHERE id = $1 RETURNING lease_token, attempt_count, now() AS claimed_at""",
        ticket_id,
    )
    return Claim(ticket_id, row["lease_token"], "test-worker", row["attempt_count"], row["claimed_at"])
