"""The review queue: tickets waiting for a reviewer (flagged, escalated, held by shadow mode, parked, or whose
delivery failed), oldest first, each with its latest attempt's draft and the action the agent took or, in
shadow mode, would have taken."""

from __future__ import annotations

from typing import Any

from core.db import Connection
from tickets.reads import decode_cursor, encode_cursor

_ATTEMPT_LATERAL = """
LEFT JOIN LATERAL (
    SELECT a.id, a.attempt_no, a.state, a.draft, a.confidence, a.decision, a.decision_reasons, a.category,
           a.priority, a.error, a.finished_at, a.mode
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
    if row.get("mode") == "shadow":
        return "shadow"
    decision = row.get("decision")
    if decision == "escalate":
        return "escalated"
    if decision == "flag_for_review" or row.get("flagged"):
        return "flagged"
    return "needs_review"


async def review_queue(
    conn: Connection, *, cursor: str | None = None, limit: int = 50
) -> tuple[list[dict[str, Any]], str | None]:
    """Tickets waiting for a reviewer, oldest first, each with its latest attempt's draft and verdict.

    `mode` is the mode the attempt's decision was taken in; with `shadow`, nothing was sent and `would_have` is
    the action the agent would have taken live (deliver, flag_for_review or escalate).
    """
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
               a.decision_reasons, a.error AS attempt_error, a.finished_at AS attempt_finished_at, a.mode,
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
        item["would_have"] = item["decision"] if item["mode"] == "shadow" else None
        item["attempt"] = (
            {
                "id": item["attempt_id"],
                "attempt_no": item["attempt_no"],
                "state": item["attempt_state"],
                "draft": item["draft"],
                "confidence": item["confidence"],
                "decision": item["decision"],
                "decision_reasons": item["decision_reasons"],
                "mode": item["mode"],
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
