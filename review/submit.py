"""A reviewer's approve / edit / reject, carried out: the plan from `review.decision.plan_review` applied in one
transaction with the ticket's row locked.

A reply the reviewer sends is queued like the agent's (outbound message + outbox row, in one transaction with
the status change and the review record). Sending also takes a fresh fencing token on the ticket, so an agent
attempt still running on it can no longer complete or reply. The review is stored as a label of the attempt
(verdict and reason), and a sent reply becomes a past resolution with the customer's specifics removed.
"""

from __future__ import annotations

import difflib
import logging
import re
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import numpy as np

from agent.scoring.risk import injection_in
from agent.state import ticket_text
from core.db import Connection
from core.errors import NotFound
from core.settings import Settings
from delivery.outbox import enqueue_reply, reply_idempotency_key, reply_recipient
from knowledge.embedder import embed, load_embedder
from knowledge.redaction import strip_specifics
from knowledge.store import upsert_resolution
from review.decision import (
    MAX_TEXT_CHARS,
    REVIEW_REASONS,
    ReviewAction,
    ReviewPlan,
    ReviewReason,
    ReviewRequest,
    ReviewState,
    check_review_request,
    plan_review,
)
from review.queue import review_queue, review_reason
from tickets.lifecycle import transition
from tickets.queue import notify_work
from tickets.subjects import reply_subject

__all__ = [
    "MAX_TEXT_CHARS",
    "REVIEW_REASONS",
    "ReviewAction",
    "ReviewReason",
    "ReviewRequest",
    "close_ticket",
    "review_queue",
    "review_reason",
    "scrubbed_for_storage",
    "submit_review",
]

log = logging.getLogger(__name__)

# Clears the review flags and takes the ticket out of the agent's hands: no queued cycle, no live lease, and a
# new fencing token so an attempt in flight fails its lease check instead of replying.
_TAKE_OVER = """
    flagged = false, needs_review = false, next_attempt_at = NULL, parked_at = NULL, last_error = NULL,
    lease_owner = NULL, lease_expires_at = NULL, lease_token = nextval('lease_token_seq')
"""

_TICKET_FOR_REVIEW = """
SELECT t.id, t.status, t.channel, t.subject, t.body, t.category, t.priority, t.flagged, t.needs_review,
       t.customer_id, t.metadata, t.customer_name, c.email AS customer_email, c.name AS account_name
FROM tickets t JOIN customers c ON c.id = t.customer_id WHERE t.id = $1
"""


def unified_diff(draft: str, sent: str) -> str:
    """The reviewer's changes as a unified diff (empty when the draft went out unchanged)."""
    lines = difflib.unified_diff(draft.splitlines(), sent.splitlines(), fromfile="draft", tofile="sent", lineterm="")
    return "\n".join(lines)


# Local parts that name a role, not a person: "billing.team@" must not turn every "Billing" into "[name]".
_ROLE_WORDS = frozenset(
    {
        "accounting", "accounts", "admin", "billing", "contact", "finance", "hello", "help", "helpdesk", "info",
        "it", "mail", "no", "noreply", "office", "ops", "reply", "sales", "service", "support", "team", "tech",
    }
)  # fmt: skip


def customer_names(ticket: dict[str, Any] | asyncpg.Record) -> list[str]:
    """The names a ticket's customer goes by: on the ticket, on the account, and in an address's local part made
    of names (ada.lovelace@ -> Ada, Lovelace; not billing@ or ada@, which say too little to be sure)."""
    names = [ticket["customer_name"] or "", ticket["account_name"] or ""]
    local = (ticket["customer_email"] or "").split("@", 1)[0].lower()
    parts = [part for part in re.split(r"[._+-]+", local) if part]
    if len(parts) >= 2 and all(part.isalpha() for part in parts) and not _ROLE_WORDS.intersection(parts):
        names.extend(part for part in parts if len(part) >= 3)
    return [name for name in names if name.strip()]


def scrubbed_for_storage(text: str, names: list[str]) -> str:
    """A text as a past resolution keeps it: no personal data, no one-ticket specifics, no injection."""
    return strip_specifics(text, names=names, drop_if=lambda sentence: injection_in(sentence) is not None)


async def _review_state(conn: Connection, ticket: asyncpg.Record) -> tuple[ReviewState, asyncpg.Record | None]:
    attempt: asyncpg.Record | None = await conn.fetchrow(
        """SELECT id, draft, decision, category, priority, confidence FROM resolution_attempts
           WHERE ticket_id = $1 AND state NOT IN ('running', 'abandoned')
           ORDER BY attempt_no DESC LIMIT 1""",
        ticket["id"],
    )
    reply_status: str | None = (
        await conn.fetchval("SELECT status FROM deliveries WHERE attempt_id = $1 AND origin = 'agent'", attempt["id"])
        if attempt is not None
        else None
    )
    state = ReviewState(
        status=ticket["status"],
        needs_review=bool(ticket["needs_review"] or ticket["flagged"]),
        draft=attempt["draft"] if attempt is not None else None,
        has_attempt=attempt is not None,
        agent_reply_status=reply_status,
    )
    return state, attempt


async def _cancel_unsent(conn: Connection, attempt_id: UUID, reason: str) -> UUID | None:
    """Cancel the agent's reply to `attempt_id` if it is still queued and no sender holds it right now."""
    cancelled: UUID | None = await conn.fetchval(
        """UPDATE deliveries SET status = 'cancelled', last_error = $2, updated_at = now()
           WHERE attempt_id = $1 AND status = 'pending'
             AND (lease_expires_at IS NULL OR lease_expires_at < now())
           RETURNING id""",
        attempt_id,
        reason,
    )
    return cancelled


async def submit_review(
    pool: asyncpg.Pool, settings: Settings, ticket_id: UUID, request: ReviewRequest
) -> dict[str, Any]:
    """Apply a reviewer's decision (see `plan_review`). Raises NotFound, InvalidInput (naming the field) or
    Conflict (a ticket that no longer needs review, so a repeated request never sends twice)."""
    edited_text = check_review_request(request)
    async with pool.acquire() as conn:
        snapshot = await conn.fetchrow(_TICKET_FOR_REVIEW, ticket_id)
    if snapshot is None:
        raise NotFound(f"ticket {ticket_id} does not exist")
    names = customer_names(snapshot)
    stored_ticket_text = scrubbed_for_storage(
        ticket_text({"subject": snapshot["subject"] or "", "body": snapshot["body"] or ""}), names
    )
    embedding: np.ndarray | None = None
    if request.action != "reject" and (snapshot["needs_review"] or snapshot["flagged"]) and stored_ticket_text:
        # Off the transaction: encoding takes tens of milliseconds and holds no locks.
        embedder = await load_embedder(settings.embedding_model)
        embedding = (await embed(embedder, [stored_ticket_text]))[0]

    async with pool.acquire() as conn, conn.transaction():
        ticket = await conn.fetchrow(_TICKET_FOR_REVIEW + " FOR UPDATE OF t", ticket_id)
        if ticket is None:
            raise NotFound(f"ticket {ticket_id} does not exist")
        state, attempt = await _review_state(conn, ticket)
        plan = plan_review(state, request, edited_text)
        review_id = uuid4()
        result = await _apply(conn, settings, ticket, attempt, plan, request, review_id)
        result["resolution_id"] = (
            await _learn(conn, ticket, attempt, plan, review_id, stored_ticket_text, names, embedding)
            if plan.learn and embedding is not None
            else None
        )
    log.info("ticket %s reviewed: %s (sent=%s)", ticket_id, request.action, plan.send)
    return result


async def _apply(
    conn: Connection,
    settings: Settings,
    ticket: asyncpg.Record,
    attempt: asyncpg.Record | None,
    plan: ReviewPlan,
    request: ReviewRequest,
    review_id: UUID,
) -> dict[str, Any]:
    """The plan's writes: cancellation, status, the review row (the label), the reviewer's reply."""
    ticket_id: UUID = ticket["id"]
    cancelled: UUID | None = None
    if plan.cancel_agent_reply is not None and attempt is not None:
        cancelled = await _cancel_unsent(conn, attempt["id"], plan.cancel_agent_reply)
    status: str = ticket["status"]
    if plan.resolve:
        await transition(
            conn,
            ticket_id,
            "resolved",
            plan.status_reason,
            extra_sets=f"resolution = $3, {_TAKE_OVER}",
            extra_args=(plan.sent_text,),
            current=status,
        )
        status = "resolved"
    else:
        await conn.execute(f"UPDATE tickets SET {_TAKE_OVER}, updated_at = now() WHERE id = $1", ticket_id)
    if plan.close:
        await transition(conn, ticket_id, "closed", f"closed by the reviewer ({plan.action})", current=status)
        status = "closed"
    draft: str | None = attempt["draft"] if attempt is not None else None
    diff = unified_diff(draft or "", plan.sent_text) if plan.sent_text is not None else None
    await conn.execute(
        """INSERT INTO reviews (id, ticket_id, attempt_id, action, draft, sent_text, diff, note, reviewer,
                                verdict, reason)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
        review_id,
        ticket_id,
        attempt["id"] if attempt is not None else None,
        plan.action,
        draft,
        plan.sent_text,
        diff,
        request.note,
        request.reviewer,
        plan.verdict,
        plan.reason,
    )
    delivery_id: UUID | None = None
    if plan.send:
        assert plan.sent_text is not None
        _, delivery_id = await enqueue_reply(
            conn,
            ticket_id=ticket_id,
            channel=ticket["channel"],
            recipient=reply_recipient(
                ticket["channel"],
                customer_email=ticket["customer_email"],
                customer_id=ticket["customer_id"],
                ticket_metadata=ticket["metadata"],
                settings=settings,
            ),
            subject=reply_subject(ticket["subject"]),
            body=plan.sent_text,
            idempotency_key=reply_idempotency_key(ticket["channel"], f"review-{review_id}"),
            origin="reviewer",
            review_id=review_id,
        )
        await notify_work(conn)
    return {
        "review_id": review_id,
        "ticket_id": ticket_id,
        "action": plan.action,
        "verdict": plan.verdict,
        "reason": plan.reason,
        "status": status,
        "sent": plan.send,
        "delivery_id": delivery_id,
        "cancelled_delivery_id": cancelled,
        "diff": diff,
    }


async def _learn(
    conn: Connection,
    ticket: asyncpg.Record,
    attempt: asyncpg.Record | None,
    plan: ReviewPlan,
    review_id: UUID,
    stored_ticket_text: str,
    names: list[str],
    embedding: np.ndarray,
) -> UUID | None:
    """The sent reply as a past resolution, scrubbed: it comes back as evidence for other customers."""
    assert plan.sent_text is not None
    resolution = scrubbed_for_storage(plan.sent_text, names)
    if not resolution:
        return None
    return await upsert_resolution(
        conn,
        ticket_text=stored_ticket_text,
        resolution=resolution,
        category=(attempt["category"] if attempt is not None else None) or ticket["category"],
        priority=(attempt["priority"] if attempt is not None else None) or ticket["priority"],
        source="reviewer_approved",
        source_ref=f"review:{review_id}",
        ticket_id=ticket["id"],
        metadata={"review_id": str(review_id), "action": plan.action},
        embedding=embedding,
    )


async def close_ticket(conn: Connection, ticket_id: UUID, *, reason: str = "closed by a reviewer") -> str:
    """Close a ticket (409 when illegal); it leaves the review queue and the agent's queue."""
    async with conn.transaction():
        previous = await transition(conn, ticket_id, "closed", reason, extra_sets=_TAKE_OVER)
    return previous
