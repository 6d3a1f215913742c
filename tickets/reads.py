"""Ticket read queries: list with filters and keyset pagination, one ticket with its thread, attempts and deliveries."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any
from uuid import UUID

from core.db import Connection, snapshot
from core.errors import InvalidInput, NotFound

TICKET_COLUMNS = """
    t.id, t.external_id, t.customer_id, c.email AS customer_email, COALESCE(t.customer_name, c.name) AS customer_name,
    c.tier AS customer_tier, t.channel, t.subject, t.body, t.category, t.priority, t.status, t.assigned_agent,
    t.resolution, t.confidence_score, t.flagged, t.needs_review, t.thread_ref, t.metadata, t.attempt_count,
    t.cycle_count, t.next_attempt_at, t.last_error, t.parked_at, t.reopen_count, t.resolved_at, t.closed_at,
    t.created_at, t.updated_at
"""


def encode_cursor(created_at: datetime, ticket_id: UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(ticket_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, ticket_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(created), UUID(ticket_id)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInput("cursor is not one this API returned", field="cursor") from None


async def list_tickets(
    conn: Connection,
    *,
    status: str | None = None,
    category: str | None = None,
    priority: str | None = None,
    customer_id: UUID | None = None,
    flagged: bool | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first. Returns the page and the cursor of the next page (None on the last page)."""
    where: list[str] = []
    args: list[Any] = []

    def add(clause: str, value: Any) -> None:
        args.append(value)
        where.append(clause.format(n=len(args)))

    if status:
        add("t.status = ${n}", status)
    if category:
        add("t.category = ${n}", category)
    if priority:
        add("t.priority = ${n}", priority)
    if customer_id:
        add("t.customer_id = ${n}", customer_id)
    if flagged is not None:
        add("t.flagged = ${n}", flagged)
    if cursor:
        created_at, last_id = decode_cursor(cursor)
        args.extend([created_at, last_id])
        where.append(f"(t.created_at, t.id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    sql = f"""
        SELECT {TICKET_COLUMNS} FROM tickets t JOIN customers c ON c.id = t.customer_id
        {"WHERE " + " AND ".join(where) if where else ""}
        ORDER BY t.created_at DESC, t.id DESC LIMIT ${len(args)}
    """
    rows = [dict(r) for r in await conn.fetch(sql, *args)]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
    return rows, next_cursor


async def get_ticket(conn: Connection, ticket_id: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"SELECT {TICKET_COLUMNS} FROM tickets t JOIN customers c ON c.id = t.customer_id WHERE t.id = $1",
        ticket_id,
    )
    if row is None:
        raise NotFound(f"ticket {ticket_id} does not exist")
    return dict(row)


async def rows(conn: Connection, sql: str, *args: Any) -> list[dict[str, Any]]:
    """The query's rows as plain dicts."""
    return [dict(r) for r in await conn.fetch(sql, *args)]


async def messages_of(conn: Connection, ticket_id: UUID) -> list[dict[str, Any]]:
    """A ticket's messages, both directions, oldest first."""
    return await rows(
        conn,
        """SELECT id, direction, channel, author, external_id, subject, body, email_message_id, attempt_id,
                  read_at, created_at
           FROM ticket_messages WHERE ticket_id = $1 ORDER BY created_at, id""",
        ticket_id,
    )


async def get_ticket_detail(conn: Connection, ticket_id: UUID) -> dict[str, Any]:
    """The ticket with its messages, status history, a summary of each attempt, deliveries and reviews."""
    async with snapshot(conn):
        ticket = await get_ticket(conn, ticket_id)
        ticket["messages"] = await messages_of(conn, ticket_id)
        ticket["status_history"] = await rows(
            conn,
            "SELECT from_status, to_status, reason, at FROM ticket_status_history WHERE ticket_id = $1 ORDER BY id",
            ticket_id,
        )
        ticket["attempts"] = await rows(
            conn,
            """SELECT id, attempt_no, state, category, priority, assigned_agent, confidence, decision, error,
                      started_at, finished_at
               FROM resolution_attempts WHERE ticket_id = $1 ORDER BY attempt_no""",
            ticket_id,
        )
        ticket["deliveries"] = await rows(
            conn,
            """SELECT id, attempt_id, channel, idempotency_key, recipient, origin, status, tries, last_error,
                      sent_at, created_at
               FROM deliveries WHERE ticket_id = $1 ORDER BY created_at""",
            ticket_id,
        )
        ticket["reviews"] = await rows(
            conn,
            "SELECT id, attempt_id, action, note, reviewer, created_at FROM reviews WHERE ticket_id = $1 "
            "ORDER BY created_at",
            ticket_id,
        )
    return ticket
