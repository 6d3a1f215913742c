"""The in-app channel: replies are stored messages the product reads (and marks read) through the admin API.

A reply becomes visible when its delivery is marked sent (or when no delivery governs it), so a reply the
reviewer cancelled before it went out never shows up.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from core.db import Connection
from core.errors import NotFound
from delivery.model import Delivery, SendOutcome
from tickets.reads import decode_cursor, encode_cursor

# A message is visible unless a delivery for it exists that has not been sent.
_VISIBLE = """
    m.direction = 'outbound' AND m.channel = 'in_app'
    AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.status <> 'sent')
"""


async def send_in_app(delivery: Delivery) -> SendOutcome:
    """Nothing travels: the message is stored already; marking the delivery sent publishes it."""
    return SendOutcome.sent("stored for the in-app inbox")


async def ensure_stored(conn: Connection, delivery: Delivery) -> UUID:
    """The delivery's message row, written now if the row was queued without one (in the sent tx)."""
    if delivery.message_id is not None:
        exists = await conn.fetchval("SELECT 1 FROM ticket_messages WHERE id = $1", delivery.message_id)
        if exists:
            return delivery.message_id
    message_id: UUID = await conn.fetchval(
        """INSERT INTO ticket_messages (ticket_id, direction, channel, author, subject, body, attempt_id)
           VALUES ($1, 'outbound', 'in_app', $2, $3, $4, $5) RETURNING id""",
        delivery.ticket_id,
        "reviewer" if delivery.origin == "reviewer" else "agent",
        delivery.subject or delivery.ticket_subject,
        delivery.body,
        delivery.attempt_id,
    )
    await conn.execute("UPDATE deliveries SET message_id = $2 WHERE id = $1", delivery.id, message_id)
    return message_id


async def _require_customer(conn: Connection, customer_id: UUID) -> None:
    if not await conn.fetchval("SELECT 1 FROM customers WHERE id = $1", customer_id):
        raise NotFound(f"customer {customer_id} does not exist")


async def list_messages(
    conn: Connection,
    customer_id: UUID,
    *,
    unread: bool | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    """A customer's in-app replies, newest first; `unread=True` only the unread ones. Returns (page, next
    cursor).
    """
    await _require_customer(conn, customer_id)
    args: list[Any] = [customer_id]
    where = ["t.customer_id = $1", _VISIBLE]
    if unread is not None:
        where.append("m.read_at IS NULL" if unread else "m.read_at IS NOT NULL")
    if cursor:
        created_at, last_id = decode_cursor(cursor)
        args.extend([created_at, last_id])
        where.append(f"(m.created_at, m.id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    rows = await conn.fetch(
        f"""SELECT m.id, m.ticket_id, t.external_id AS ticket_external_id, m.subject, m.body, m.author,
                   m.created_at, m.read_at, (m.read_at IS NULL) AS unread
            FROM ticket_messages m JOIN tickets t ON t.id = m.ticket_id
            WHERE {" AND ".join(where)}
            ORDER BY m.created_at DESC, m.id DESC LIMIT ${len(args)}""",
        *args,
    )
    items = [dict(r) for r in rows]
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = encode_cursor(items[-1]["created_at"], items[-1]["id"])
    return items, next_cursor


async def mark_read(conn: Connection, customer_id: UUID, message_ids: list[UUID] | None) -> int:
    """Mark the given visible messages of this customer read (all of them when `message_ids` is None).

    Ids of other customers' messages, or unknown ids, are ignored. Returns how many became read.
    """
    await _require_customer(conn, customer_id)
    status = await conn.execute(
        f"""UPDATE ticket_messages m SET read_at = now()
            FROM tickets t
            WHERE t.id = m.ticket_id AND t.customer_id = $1 AND {_VISIBLE} AND m.read_at IS NULL
              AND ($2::uuid[] IS NULL OR m.id = ANY($2::uuid[]))""",
        customer_id,
        message_ids,
    )
    return int(status.split()[-1])


async def unread_count(conn: Connection, customer_id: UUID) -> int:
    count: int = await conn.fetchval(
        f"""SELECT count(*) FROM ticket_messages m JOIN tickets t ON t.id = m.ticket_id
            WHERE t.customer_id = $1 AND {_VISIBLE} AND m.read_at IS NULL""",
        customer_id,
    )
    return count


async def customer_thread(conn: Connection, customer_email: str, *, limit: int = 200) -> list[dict[str, Any]]:
    """The in-app conversation of one customer (by email), oldest first: what they wrote on the in-app channel and
    the replies visible to them. Nothing of any other customer, whatever the ids involved."""
    rows = await conn.fetch(
        f"""SELECT * FROM (
                SELECT m.id, m.ticket_id, m.direction, m.author, m.body, m.created_at
                FROM ticket_messages m
                JOIN tickets t ON t.id = m.ticket_id
                JOIN customers c ON c.id = t.customer_id
                WHERE c.email = $1 AND t.channel = 'in_app'
                  AND (m.direction = 'inbound' OR ({_VISIBLE}))
                ORDER BY m.created_at DESC, m.id DESC LIMIT $2) AS recent
            ORDER BY created_at, id""",
        customer_email,
        limit,
    )
    return [dict(r) for r in rows]
