"""The fenced writes of a live attempt: dispatch (status in_progress) and the decision transaction (reply queued
in the outbox and ticket resolved, or ticket escalated), each starting with `assert_lease` so a worker whose
lease was taken over writes nothing (raises `LeaseLost`).

The decision transaction also reads the agent's mode (`agent_modes`, DESKPILOT_MODE until one is set): in
shadow mode a reply is not queued and the ticket waits in the review queue with the decision it would have
had. Read under the ticket's lease in the same transaction, a mode switch applies to each decision exactly
once: a ticket in flight is either sent (live) or held (shadow), never both and never neither.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

import asyncpg
import numpy as np

from agent.audit import json_text
from agent.state import AgentState
from core.db import Connection
from core.settings import Settings
from delivery.outbox import enqueue_reply, reply_idempotency_key, reply_recipient
from tickets.lifecycle import transition
from tickets.queue import Claim, assert_lease, finish_claim, notify_work
from tickets.subjects import reply_subject


async def mark_in_progress(
    pool: asyncpg.Pool, claim: Claim, *, category: str, priority: str, assigned_agent: str
) -> str:
    """Record the routing and move the ticket to in_progress (from open or pending_customer)."""
    async with pool.acquire() as conn, conn.transaction():
        # No fsync wait: a status change lost in a crash is redone when the ticket is claimed again.
        locked = await assert_lease(conn, claim, durable=False)
        return await transition(
            conn,
            claim.ticket_id,
            "in_progress",
            f"dispatched to {assigned_agent}",
            extra_sets="category = $3, priority = $4, assigned_agent = $5",
            extra_args=(category, priority, assigned_agent),
            current=locked["status"],
        )


async def decision_mode(conn: Connection, category: str | None, default: str) -> str:
    """The mode a decision in `category` is taken in: the category's own, else the deployment's, else
    `default` (DESKPILOT_MODE)."""
    mode: str = await conn.fetchval(
        """SELECT COALESCE((SELECT mode FROM agent_modes WHERE scope = $1),
                           (SELECT mode FROM agent_modes WHERE scope = '*'), $2)""",
        category,
        default,
    )
    return mode


async def _finish_attempt(
    conn: Connection,
    attempt_id: UUID,
    state: AgentState,
    *,
    decision: str,
    reasons: list[str],
    retryable: bool | None,
    mode: str,
) -> None:
    classification = state.get("classification", {})
    prioritization = state.get("prioritization", {})
    dispatch = state.get("dispatch", {})
    drafted = state.get("drafted", {})
    scoring = state.get("scoring", {})
    embedding = state.get("embedding")
    await conn.execute(
        """
        UPDATE resolution_attempts SET
            state = 'completed', finished_at = now(),
            category = $2, priority = $3, assigned_agent = $4, routing = $5::text::jsonb,
            context = $6::text::jsonb, retrieved = $7::text::jsonb, prompt = $8, draft = $9,
            citations = $10::text::jsonb, confidence = $11, confidence_breakdown = $12::text::jsonb,
            decision = $13, decision_reasons = $14::text::jsonb, model = $15::text::jsonb, query_embedding = $16,
            escalation_retryable = $17, mode = $18, calibration_version = $19
        WHERE id = $1
        """,
        attempt_id,
        classification.get("category"),
        prioritization.get("priority"),
        dispatch.get("assigned_agent"),
        json_text({"classify": classification, "prioritize": prioritization, "dispatch": dispatch}),
        json_text(state.get("context", {})),
        json_text(state.get("retrieval", {}).get("items", [])),
        drafted.get("prompt") or drafted.get("template"),
        drafted.get("draft"),
        json_text(drafted.get("citations", [])),
        scoring.get("confidence"),
        json_text(scoring.get("breakdown", {})),
        decision,
        json_text(reasons),
        json_text(
            {"drafter": drafted.get("drafter"), **(drafted.get("model") or {}), "routing": classification.get("model")}
        ),
        np.asarray(embedding, dtype=np.float32) if embedding is not None else None,
        retryable,
        mode,
        scoring.get("calibration_version"),
    )


async def commit_reply(
    pool: asyncpg.Pool,
    settings: Settings,
    claim: Claim,
    attempt_id: UUID,
    state: AgentState,
    *,
    decision: Literal["deliver", "flag_for_review"],
    reasons: list[str],
) -> UUID | None:
    """One transaction: outbound message + outbox row, ticket resolved with the reply, attempt completed,
    claim released, workers woken to send. Returns the delivery id; None in shadow mode, where nothing is
    queued and the ticket waits for a reviewer (pending_customer, needs_review) with the decision it would
    have had."""
    ticket = state["ticket"]
    flagged = decision == "flag_for_review"
    channel = ticket.get("channel") or "email"
    recipient = reply_recipient(
        channel,
        customer_email=ticket.get("customer_email"),
        customer_id=ticket.get("customer_id"),
        ticket_metadata=ticket.get("metadata"),
        settings=settings,
    )
    text = state["drafted"]["draft"]
    scoring = state["scoring"]
    async with pool.acquire() as conn, conn.transaction():
        locked = await assert_lease(conn, claim)
        mode = await decision_mode(conn, state["classification"]["category"], settings.mode)
        if mode == "shadow":
            await _hold_for_review(conn, claim, attempt_id, state, locked["status"], decision, reasons)
            return None
        _message_id, delivery_id = await enqueue_reply(
            conn,
            ticket_id=claim.ticket_id,
            channel=channel,
            recipient=recipient,
            subject=reply_subject(ticket.get("subject") or ""),
            body=text,
            idempotency_key=reply_idempotency_key(channel, str(attempt_id)),
            origin="agent",
            attempt_id=attempt_id,
        )
        await transition(
            conn,
            claim.ticket_id,
            "resolved",
            "agent reply sent for review" if flagged else "agent reply sent",
            extra_sets=(
                "resolution = $3, confidence_score = $4, category = $5, priority = $6, assigned_agent = $7, "
                "flagged = $8, needs_review = $8"
            ),
            extra_args=(
                text,
                scoring["confidence"],
                state["classification"]["category"],
                state["prioritization"]["priority"],
                state["dispatch"]["assigned_agent"],
                flagged,
            ),
            current=locked["status"],
        )
        await _finish_attempt(conn, attempt_id, state, decision=decision, reasons=reasons, retryable=None, mode="live")
        await finish_claim(conn, claim)
        await notify_work(conn)
    return delivery_id


SHADOW_REASON = "shadow mode: nothing sent, held for a reviewer"


async def _hold_for_review(
    conn: Connection,
    claim: Claim,
    attempt_id: UUID,
    state: AgentState,
    current: str,
    decision: str,
    reasons: list[str],
) -> None:
    """Shadow mode's half of the decision transaction: no reply, the ticket waits for a reviewer (as an
    escalated one does, without further cycles) and the attempt keeps the decision it would have had."""
    await transition(
        conn,
        claim.ticket_id,
        "pending_customer",
        f"{SHADOW_REASON} (would have: {decision})",
        extra_sets=(
            "needs_review = true, flagged = false, confidence_score = $3, category = $4, priority = $5, "
            "assigned_agent = $6"
        ),
        extra_args=(
            state["scoring"]["confidence"],
            state["classification"]["category"],
            state["prioritization"]["priority"],
            state["dispatch"]["assigned_agent"],
        ),
        current=current,
    )
    await _finish_attempt(
        conn, attempt_id, state, decision=decision, reasons=[SHADOW_REASON, *reasons], retryable=None, mode="shadow"
    )
    await finish_claim(conn, claim)


async def commit_escalation(
    pool: asyncpg.Pool,
    settings: Settings,
    claim: Claim,
    attempt_id: UUID,
    state: AgentState,
    *,
    reasons: list[str],
    retryable: bool,
) -> dict[str, Any]:
    """One transaction: ticket pending_customer and needing review, no reply; another cycle later with backoff
    while `cycle_count < max_cycles` and a re-run could change the outcome. Returns the retry plan."""
    scoring = state["scoring"]
    async with pool.acquire() as conn, conn.transaction():
        locked = await assert_lease(conn, claim)
        # An escalation sends nothing in either mode; the attempt records which one it was decided in.
        mode = await decision_mode(conn, state["classification"]["category"], settings.mode)
        cycle = int(locked["cycle_count"] or 0)
        retry = retryable and cycle < settings.max_cycles
        retry_at_s = settings.cycle_backoff_s * 2**cycle if retry else None
        await transition(
            conn,
            claim.ticket_id,
            "pending_customer",
            "escalated: " + (reasons[0] if reasons else "low confidence"),
            extra_sets=(
                "needs_review = true, confidence_score = $3, category = $4, priority = $5, assigned_agent = $6, "
                "cycle_count = cycle_count + 1"
            ),
            extra_args=(
                scoring["confidence"],
                state["classification"]["category"],
                state["prioritization"]["priority"],
                state["dispatch"]["assigned_agent"],
            ),
            current=locked["status"],
        )
        await _finish_attempt(
            conn, attempt_id, state, decision="escalate", reasons=reasons, retryable=retryable, mode=mode
        )
        await finish_claim(conn, claim, retry_at_s=retry_at_s)
    return {"cycle": cycle + 1, "retry": retry, "retry_in_s": retry_at_s}


async def finish_without_work(pool: asyncpg.Pool, claim: Claim) -> None:
    """Release a claim on a ticket that has nothing to do (already resolved or closed)."""
    async with pool.acquire() as conn, conn.transaction():
        await assert_lease(conn, claim)
        await finish_claim(conn, claim)
