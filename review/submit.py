"""The review loop: the queue of flagged and escalated tickets, and a reviewer's approve / edit / reject.

A reply the reviewer sends is queued like the agent's (outbound message + outbox row, in one transaction with
the status change and the review record) and becomes a past resolution the retriever finds from then on.
Sending also takes a fresh fencing token on the ticket, so an agent attempt still running on it can no longer
complete or reply.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID, uuid4

import asyncpg
import numpy as np

from core.db import Connection
from core.errors import Conflict, InvalidInput, NotFound
from core.settings import Settings
from delivery.mail import reply_subject
from delivery.outbox import enqueue_reply, reply_idempotency_key, reply_recipient
from knowledge.embedder import embed, load_embedder
from knowledge.store import upsert_resolution
from tickets.lifecycle import transition
from tickets.queue import notify_work
from tickets.reads import decode_cursor, encode_cursor

log = logging.getLogger(__name__)

ReviewAction = Literal["approve", "edit", "reject"]
MAX_TEXT_CHARS = 20_000

# Clears the review flags and takes the ticket out of the agent's hands: no queued cycle, no live lease, and a
# new fencing token so an attempt in flight fails its lease check instead of replying.
_TAKE_OVER = """
    flagged = false, needs_review = false, next_attempt_at = NULL, parked_at = NULL, last_error = NULL,
    lease_owner = NULL, lease_expires_at = NULL, lease_token = nextval('lease_token_seq')
"""


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    action: ReviewAction
    text: str | None = None
    note: str | None = None
    close: bool = False
    reviewer: str | None = None


# --- the queue ----------------------------------------------------------------------------------------------

_ATTEMPT_LATERAL = """
LEFT JOIN LATERAL (
    SELECT a.id, a.attempt_no, a.state, a.draft, a.confidence, a.decision, a.decision_reasons, a.category,
           a.priority, a.error, a.finished_at
    FROM resolution_attempts a
    WHERE a.ticket_id = t.id AND a.state NOT IN ('running', 'abandoned')
    ORDER BY a.attempt_no DESC LIMIT 1
) a ON true
"""


def review_reason(row: dict[str, Any]) -> str:
    """Why the ticket is in the queue, in the order a reviewer should care."""
    if row.get("delivery_status") in {"failed", "disabled"}:
        return "delivery_failed"
    if row.get("parked_at") is not None:
        return "parked"
    decision = row.get("decision")
    if decision == "escalate":
        return "escalated"
    if decision == "flag_for_review" or row.get("flagged"):
        return "flagged"
    return "needs_review"


async def review_queue(
    conn: Connection, *, cursor: str | None = None, limit: int = 50
) -> tuple[list[dict[str, Any]], str | None]:
    """Tickets waiting for a reviewer, oldest first, each with its latest attempt's draft and verdict."""
    args: list[Any] = []
    where = ["(t.needs_review OR t.flagged)"]
    if cursor:
        created_at, last_id = decode_cursor(cursor)
        args.extend([created_at, last_id])
        where.append("(t.created_at, t.id) > ($1, $2)")
    args.append(limit + 1)
    rows = await conn.fetch(
        f"""
        SELECT t.id, t.external_id, t.customer_id, c.email AS customer_email, c.tier AS customer_tier,
               t.channel,
               t.subject, t.body, t.status, t.flagged, t.needs_review, t.last_error, t.parked_at,
               t.confidence_score, t.created_at, t.updated_at,
               COALESCE(a.category, t.category) AS category, COALESCE(a.priority, t.priority) AS priority,
               a.id AS attempt_id, a.attempt_no, a.state AS attempt_state, a.draft, a.confidence, a.decision,
               a.decision_reasons, a.error AS attempt_error, a.finished_at AS attempt_finished_at,
               ld.status AS delivery_status, ld.last_error AS delivery_error
        FROM tickets t
        JOIN customers c ON c.id = t.customer_id
        {_ATTEMPT_LATERAL}
        LEFT JOIN LATERAL (
            SELECT d.status, d.last_error FROM deliveries d WHERE d.ticket_id = t.id
            ORDER BY d.created_at DESC, d.id DESC LIMIT 1
        ) ld ON true
        WHERE {" AND ".join(where)}
        ORDER BY t.created_at, t.id
        LIMIT ${len(args)}
        """,
        *args,
    )
    items = []
    for row in rows:
        item = dict(row)
        item["reason"] = review_reason(item)
        item["attempt"] = (
            {
                "id": item["attempt_id"],
                "attempt_no": item["attempt_no"],
                "state": item["attempt_state"],
                "draft": item["draft"],
                "confidence": item["confidence"],
                "decision": item["decision"],
                "decision_reasons": item["decision_reasons"],
                "error": item["attempt_error"],
                "finished_at": item["attempt_finished_at"],
            }
            if item["attempt_id"] is not None
            else None
        )
        for key in ("attempt_no", "attempt_state", "attempt_error", "attempt_finished_at"):
            item.pop(key)
        items.append(item)
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = encode_cursor(items[-1]["created_at"], items[-1]["id"])
    return items, next_cursor


# --- acting on a ticket -------------------------------------------------------------------------------------


def check_review_request(request: ReviewRequest) -> str | None:
    """Validate the parts a schema cannot; returns the reviewer's text (stripped) for an edit."""
    for field_name, value in (("text", request.text), ("note", request.note), ("reviewer", request.reviewer)):
        if value is None:
            continue
        if "\x00" in value:
            raise InvalidInput(f"{field_name} must not contain NUL characters", field=field_name)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{field_name} is not valid Unicode text", field=field_name) from None
    if request.action == "edit":
        text = (request.text or "").strip()
        if not text:
            raise InvalidInput("text is required for an edit (1 to 20000 characters)", field="text")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidInput(f"text must be at most {MAX_TEXT_CHARS} characters", field="text")
        return text
    if request.text is not None:
        raise InvalidInput(f"text is only accepted with action 'edit', not {request.action!r}", field="text")
    return None


def unified_diff(draft: str, sent: str) -> str:
    """The reviewer's changes as a unified diff (empty when the draft went out unchanged)."""
    lines = difflib.unified_diff(
        draft.splitlines(), sent.splitlines(), fromfile="draft", tofile="sent", lineterm=""
    )
    return "\n".join(lines)


def ticket_text(subject: str, body: str) -> str:
    """What a past resolution is matched on: the customer's subject and message."""
    return f"{subject.strip()}\n\n{body.strip()}" if subject.strip() else body.strip()


_TICKET_FOR_REVIEW = """
SELECT t.id, t.status, t.channel, t.subject, t.body, t.category, t.priority, t.flagged, t.needs_review,
       t.customer_id, t.metadata, c.email AS customer_email
FROM tickets t JOIN customers c ON c.id = t.customer_id WHERE t.id = $1
"""


async def _latest_attempt(conn: Connection, ticket_id: UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        """SELECT id, draft, decision, category, priority, confidence FROM resolution_attempts
           WHERE ticket_id = $1 AND state NOT IN ('running', 'abandoned')
           ORDER BY attempt_no DESC LIMIT 1""",
        ticket_id,
    )
    return row


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
    """Apply a reviewer's decision. Raises NotFound, InvalidInput (naming the field) or Conflict.

    approve: send the latest draft — unless the ticket is already resolved with that draft delivered (or on
    its way), which only clears the flag; edit: send the reviewer's text (a correction when the draft already
    went out); reject: send nothing. A ticket that no longer needs review is a Conflict, so a repeated request
    never sends twice.
    """
    edited_text = check_review_request(request)
    async with pool.acquire() as conn:
        snapshot = await conn.fetchrow(_TICKET_FOR_REVIEW, ticket_id)
    if snapshot is None:
        raise NotFound(f"ticket {ticket_id} does not exist")
    if not (snapshot["needs_review"] or snapshot["flagged"]):
        raise Conflict("the ticket does not need review (already reviewed?)", field="action")
    embedding: np.ndarray | None = None
    if request.action != "reject":
        # Off the transaction: encoding takes tens of milliseconds and holds no locks.
        embedder = await load_embedder(settings.embedding_model)
        embedding = (await embed(embedder, [ticket_text(snapshot["subject"], snapshot["body"])]))[0]

    async with pool.acquire() as conn, conn.transaction():
        ticket = await conn.fetchrow(_TICKET_FOR_REVIEW + " FOR UPDATE OF t", ticket_id)
        if ticket is None:
            raise NotFound(f"ticket {ticket_id} does not exist")
        if not (ticket["needs_review"] or ticket["flagged"]):
            raise Conflict("the ticket does not need review (already reviewed?)", field="action")
        attempt = await _latest_attempt(conn, ticket_id)
        draft: str | None = attempt["draft"] if attempt is not None else None
        agent_delivery = (
            await conn.fetchrow(
                "SELECT id, status FROM deliveries WHERE attempt_id = $1 AND origin = 'agent'", attempt["id"]
            )
            if attempt is not None
            else None
        )
        already_delivered = (
            ticket["status"] == "resolved"
            and agent_delivery is not None
            and agent_delivery["status"] in {"pending", "sent"}
        )
        review_id = uuid4()
        sent_text: str | None
        send = False
        cancelled: UUID | None = None
        if request.action == "approve":
            if not draft:
                raise Conflict(
                    "the latest attempt has no draft to approve; send an edit instead", field="action"
                )
            sent_text = draft
            send = not already_delivered
        elif request.action == "edit":
            sent_text = edited_text
            send = True
            if already_delivered and attempt is not None:
                cancelled = await _cancel_unsent(conn, attempt["id"], "superseded by the reviewer's edit")
        else:
            sent_text = None
            if attempt is not None:
                cancelled = await _cancel_unsent(conn, attempt["id"], "rejected by the reviewer")

        status = ticket["status"]
        if send:
            assert sent_text is not None
            await transition(
                conn,
                ticket_id,
                "resolved",
                f"reviewer {'approved the draft' if request.action == 'approve' else 'edited the reply'}",
                extra_sets=f"resolution = $3, {_TAKE_OVER}",
                extra_args=(sent_text,),
            )
            status = "resolved"
        else:
            await conn.execute(
                f"UPDATE tickets SET {_TAKE_OVER}, updated_at = now() WHERE id = $1", ticket_id
            )
        if request.close:
            await transition(conn, ticket_id, "closed", f"closed by the reviewer ({request.action})")
            status = "closed"

        diff = unified_diff(draft or "", sent_text) if sent_text is not None else None
        await conn.execute(
            """INSERT INTO reviews (id, ticket_id, attempt_id, action, draft, sent_text, diff, note, reviewer)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            review_id,
            ticket_id,
            attempt["id"] if attempt is not None else None,
            request.action,
            draft,
            sent_text,
            diff,
            request.note,
            request.reviewer,
        )
        delivery_id: UUID | None = None
        if send:
            assert sent_text is not None
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
                body=sent_text,
                idempotency_key=reply_idempotency_key(ticket["channel"], f"review-{review_id}"),
                origin="reviewer",
                review_id=review_id,
            )
            await notify_work(conn)
        resolution_id: UUID | None = None
        if sent_text is not None and embedding is not None:
            resolution_id = await upsert_resolution(
                conn,
                ticket_text=ticket_text(ticket["subject"], ticket["body"]),
                resolution=sent_text,
                category=(attempt["category"] if attempt is not None else None) or ticket["category"],
                priority=(attempt["priority"] if attempt is not None else None) or ticket["priority"],
                source="reviewer_approved",
                source_ref=f"review:{review_id}",
                ticket_id=ticket_id,
                metadata={"review_id": str(review_id), "action": request.action},
                embedding=embedding,
            )
    log.info("ticket %s reviewed: %s (sent=%s)", ticket_id, request.action, send)
    return {
        "review_id": review_id,
        "ticket_id": ticket_id,
        "action": request.action,
        "status": status,
        "sent": send,
        "delivery_id": delivery_id,
        "cancelled_delivery_id": cancelled,
        "diff": diff,
        "resolution_id": resolution_id,
    }


async def close_ticket(
    conn: Connection, ticket_id: UUID, *, reason: str = "closed by a reviewer"
) -> str:
    """Close a ticket (409 when illegal); it leaves the review queue and the agent's queue."""
    async with conn.transaction():
        previous = await transition(conn, ticket_id, "closed", reason, extra_sets=_TAKE_OVER)
    return previous
