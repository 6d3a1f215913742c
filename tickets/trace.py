"""The agent trace of one ticket: the ticket, its status history and messages, and every resolution attempt,
node by node.

`get_trace` returns the JSON shape of `GET /api/tickets/{id}/trace`; the HTML viewer renders the same dict.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from core.db import Connection, snapshot
from tickets.reads import get_ticket, messages_of, rows

_ATTEMPT_COLUMNS = """
    id, ticket_id, attempt_no, lease_token, worker_id, state, category, priority, assigned_agent, routing, context,
    retrieved, prompt, draft, citations, confidence, confidence_breakdown, decision, decision_reasons, model,
    knowledge_version, mode, calibration_version, error, started_at, finished_at
"""


async def get_trace(conn: Connection, ticket_id: UUID) -> dict[str, Any]:
    """Everything the agent did with a ticket, oldest attempt first. Raises NotFound for an unknown ticket.

    Shape: {"ticket": {...}, "status_history": [...], "messages": [...], "attempts": [{...attempt columns,
    "steps": [{seq, node, started_at, duration_ms, output, error}], "deliveries": [...], "reviews": [...]}],
    "unattached_deliveries": [...], "unattached_reviews": [...]} (reviewer replies and reviews whose attempt is gone).
    """
    async with snapshot(conn):
        ticket = await get_ticket(conn, ticket_id)
        status_history = await rows(
            conn,
            """SELECT id, from_status, to_status, reason, at FROM ticket_status_history
               WHERE ticket_id = $1 ORDER BY at, id""",
            ticket_id,
        )
        messages = await messages_of(conn, ticket_id)
        attempts = await rows(
            conn,
            f"SELECT {_ATTEMPT_COLUMNS} FROM resolution_attempts WHERE ticket_id = $1 ORDER BY attempt_no, started_at",
            ticket_id,
        )
        attempt_ids = [a["id"] for a in attempts]
        steps = await conn.fetch(
            """SELECT attempt_id, seq, node, started_at, duration_ms, output, error FROM attempt_steps
               WHERE attempt_id = ANY($1::uuid[]) ORDER BY attempt_id, seq""",
            attempt_ids,
        )
        deliveries = await conn.fetch(
            """SELECT id, attempt_id, message_id, channel, idempotency_key, recipient, subject, body, origin, status,
                      tries, next_attempt_at, last_error, sent_at, created_at, updated_at
               FROM deliveries WHERE ticket_id = $1 ORDER BY created_at, id""",
            ticket_id,
        )
        reviews = await conn.fetch(
            """SELECT id, attempt_id, action, verdict, reason, draft, sent_text, diff, note, reviewer, created_at
               FROM reviews WHERE ticket_id = $1 ORDER BY created_at, id""",
            ticket_id,
        )
    by_id: dict[Any, dict[str, Any]] = {}
    for attempt in attempts:
        attempt["steps"] = []
        attempt["deliveries"] = []
        attempt["reviews"] = []
        by_id[attempt["id"]] = attempt
    for step in steps:
        row = dict(step)
        by_id[row.pop("attempt_id")]["steps"].append(row)
    unattached_deliveries: list[dict[str, Any]] = []
    for delivery in deliveries:
        row = dict(delivery)
        owner = by_id.get(row["attempt_id"])
        (owner["deliveries"] if owner is not None else unattached_deliveries).append(row)
    unattached_reviews: list[dict[str, Any]] = []
    for review in reviews:
        row = dict(review)
        owner = by_id.get(row["attempt_id"])
        (owner["reviews"] if owner is not None else unattached_reviews).append(row)
    return {
        "ticket": ticket,
        "status_history": status_history,
        "messages": messages,
        "attempts": attempts,
        "unattached_deliveries": unattached_deliveries,
        "unattached_reviews": unattached_reviews,
    }
